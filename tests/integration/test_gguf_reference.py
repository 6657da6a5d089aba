"""The GGUF reader and dequantizers against the `gguf` Python package on the same bytes:
the default model's tensors, and a file with every supported type built from random blocks."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFWriter
from gguf.quants import GGML_QUANT_SIZES, dequantize

SUPPORTED = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]


def read_probe(probe, model, name, tmp_path):
    out = tmp_path / f"{name}.f32"
    info = probe("tensor", name, out, model=model)
    return info, np.fromfile(out, dtype=np.float32)


@pytest.mark.parametrize("name", ["token_embd.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight",
                                  "blk.29.attn_norm.weight", "output_norm.weight"])
def test_model_tensors_match_gguf_package(probe, model_path, name, tmp_path):
    reader = GGUFReader(str(model_path))
    t = next(t for t in reader.tensors if t.name == name)
    ref = dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
    info, ours = read_probe(probe, model_path, name, tmp_path)
    assert info["type"] == t.tensor_type.name
    assert ours.shape == ref.shape
    # Same formula in fp32: equal up to rounding of a multiply-add.
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


def random_blocks(qtype, n_elems, rng):
    """Random bytes for n_elems of qtype, with every fp16 scale field set to a sane value."""
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_elems // block, size), dtype=np.uint8)
    def put_f16(col):
        vals = rng.uniform(-0.1, 0.1, size=raw.shape[0]).astype(np.float16)
        raw[:, col:col + 2] = vals.view(np.uint8).reshape(-1, 2)
    if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
        put_f16(0)
    elif qtype in (T.Q4_1, T.Q5_1, T.Q4_K, T.Q5_K):
        put_f16(0); put_f16(2)
    elif qtype == T.Q6_K:
        put_f16(208)
    elif qtype == T.F16:
        raw = rng.uniform(-4, 4, size=n_elems).astype(np.float16).view(np.uint8).reshape(-1, 2)
    elif qtype == T.BF16:
        f = rng.uniform(-4, 4, size=n_elems).astype(np.float32)
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(-1, 2)
    elif qtype == T.F32:
        raw = rng.uniform(-4, 4, size=n_elems).astype(np.float32).view(np.uint8).reshape(-1, 4)
    return raw


def test_every_supported_type_matches_gguf_package(probe, tmp_path):
    rng = np.random.default_rng(1234)
    path = tmp_path / "types.gguf"
    w = GGUFWriter(str(path), "llama")
    n = 512  # two K-quant super-blocks, sixteen legacy blocks
    blobs = {}
    for qt in SUPPORTED:
        raw = random_blocks(qt, n, rng)
        blobs[qt] = raw
        w.add_tensor(f"t_{qt.name}", raw.reshape(1, -1), raw_shape=(1, raw.size), raw_dtype=qt)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    for qt, raw in blobs.items():
        ref = dequantize(raw.reshape(-1), qt).astype(np.float32).ravel()
        info, ours = read_probe(probe, path, f"t_{qt.name}", tmp_path)
        assert info["type"] == qt.name
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6, err_msg=qt.name)
