"""Hugging Face checkpoints: for each supported architecture, a tiny random checkpoint made by
`transformers` inside the test (tests/integration/hf_checkpoints.py) is loaded by our runtime
(svdq-probe logits, the loader the server uses) and its last-position logits are compared
with transformers' own forward:
  - CPU, fp32: max |ours - theirs| <= 1e-4 * max(1, max |theirs|) per prompt;
  - GPU host, bf16 and fp16 (gpu-marked): relative L2 error <= 3e-2 against the fp32 reference.
Then malformed checkpoints: each gives a clear error naming the file (and tensor), exit code 1,
never a crash."""
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch

from conftest import BUILD
from hf_checkpoints import KINDS, VOCAB, make_checkpoint

PROMPTS = [[5], [17, 3, 250, 9, 44, 101, 7], list(range(1, 41)), [(i * 37) % VOCAB for i in range(100)]]


def probe_logits(folder, tmp_path, env=None):
    out = tmp_path / "logits.f32"
    r = subprocess.run([str(BUILD / "tools" / "svdq-probe"), "logits", str(folder), str(out)],
                       input=json.dumps(PROMPTS), capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    vocab = json.loads(r.stdout)[0]
    return np.fromfile(out, dtype=np.float32).reshape(len(PROMPTS), vocab)


def reference_logits(model):
    with torch.no_grad():
        return np.stack([model(torch.tensor([p])).logits[0, -1].float().numpy() for p in PROMPTS])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for kind in KINDS:
        folder = tmp_path_factory.mktemp(kind)
        out[kind] = (folder, make_checkpoint(kind, folder))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_match_transformers_cpu_fp32(checkpoints, kind, tmp_path):
    folder, model = checkpoints[kind]
    ours, ref = probe_logits(folder, tmp_path), reference_logits(model)
    for i, p in enumerate(PROMPTS):
        err = np.abs(ours[i] - ref[i]).max()
        assert err <= 1e-4 * max(1.0, np.abs(ref[i]).max()), f"{kind}, prompt of {len(p)}: max error {err}"
    # The logits are not trivially equal across prompts (the check has something to see).
    assert np.abs(ref[0] - ref[1]).max() > 1e-2


def test_llama3_rope_scaling_is_applied(checkpoints, tmp_path):
    """Dropping the llama3 scaling from config.json changes our logits: the parity above relies on it."""
    folder, _ = checkpoints["llama3"]
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    cfg = json.loads((plain / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    (plain / "config.json").write_text(json.dumps(cfg))
    assert np.abs(probe_logits(plain, tmp_path) - probe_logits(folder, tmp_path))[2:].max() > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_match_transformers_gpu(checkpoints, kind, dtype, tmp_path):
    folder, model = checkpoints[kind]
    ours = probe_logits(folder, tmp_path, {"SVDQ_PROBE_DEVICE": "cuda", "SVDQ_PROBE_DTYPE": dtype})
    ref = reference_logits(model)
    for i in range(len(PROMPTS)):
        rel = np.linalg.norm(ours[i] - ref[i]) / np.linalg.norm(ref[i])
        assert rel <= 3e-2, f"{kind}, prompt {i}: relative L2 error {rel}"


# --- malformed checkpoints ---------------------------------------------------------------

def read_st(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path, header, data, pad=True):
    h = json.dumps(header).encode()
    if pad:  # as the format's writers do: the header padded with spaces to keep tensors aligned
        h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def probe_error(folder, tmp_path):
    r = subprocess.run([str(BUILD / "tools" / "svdq-probe"), "logits", str(folder), str(tmp_path / "x.f32")],
                       input="[[1, 2]]", capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, f"exit {r.returncode} (a negative code is a crash): {r.stderr}"
    return r.stderr


def broken(checkpoints, tmp_path, kind="smollm2"):
    folder = tmp_path / "broken"
    shutil.copytree(checkpoints[kind][0], folder)
    return folder


def test_truncated_safetensors(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    st = f / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    err = probe_error(f, tmp_path)
    assert "model.safetensors" in err and "outside the data section" in err, err


def test_header_longer_than_file(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    st = f / "model.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    err = probe_error(f, tmp_path)
    assert "runs past the end of the file" in err, err


def test_bad_header_json(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    st = f / "model.safetensors"
    raw = bytearray(st.read_bytes())
    raw[8] = ord("[") if raw[8] != ord("[") else ord("{")
    raw[9:14] = b"nope!"
    st.write_bytes(bytes(raw))
    err = probe_error(f, tmp_path)
    assert "model.safetensors" in err and "not valid JSON" in err, err


def test_unknown_dtype(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    header, data = read_st(f / "model.safetensors")
    name = "model.norm.weight"
    header[name]["dtype"] = "F64"
    write_st(f / "model.safetensors", header, data)
    err = probe_error(f, tmp_path)
    assert name in err and "dtype F64 is not supported" in err, err


def test_misaligned_data(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    header, data = read_st(f / "model.safetensors")
    h = json.dumps(header).encode()
    write_st(f / "model.safetensors", header, data, pad=False)
    if len(h) % 4 == 0:  # make the header length odd so that F32 data cannot be aligned
        raw = (f / "model.safetensors").read_bytes()
        (f / "model.safetensors").write_bytes(struct.pack("<Q", len(h) + 1) + h + b" " + raw[8 + len(h):])
    err = probe_error(f, tmp_path)
    assert "not aligned" in err, err


def test_size_disagrees_with_shape(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    header, data = read_st(f / "model.safetensors")
    header["model.norm.weight"]["shape"] = [65]
    write_st(f / "model.safetensors", header, data)
    err = probe_error(f, tmp_path)
    assert "model.norm.weight" in err and "needs" in err, err


def test_shape_mismatch_with_config(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    cfg = json.loads((f / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (f / "config.json").write_text(json.dumps(cfg))
    err = probe_error(f, tmp_path)
    assert "model.layers.0.mlp.gate_proj.weight" in err and "the config implies [128, 64]" in err, err


def test_missing_tensor_and_missing_shard(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path, "llama2")
    index = json.loads((f / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["lm_head.weight"]
    (f / shard).unlink()
    err = probe_error(f, tmp_path)
    assert shard in err and "cannot open" in err, err


def test_unsupported_architecture(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    cfg = json.loads((f / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (f / "config.json").write_text(json.dumps(cfg))
    err = probe_error(f, tmp_path)
    assert "architecture 'GPT2LMHeadModel' is not supported" in err, err


def test_unsupported_rope_scaling(checkpoints, tmp_path):
    f = broken(checkpoints, tmp_path)
    cfg = json.loads((f / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    (f / "config.json").write_text(json.dumps(cfg))
    err = probe_error(f, tmp_path)
    assert "rope scaling type 'yarn' is not supported" in err, err


def test_truncated_gguf(model_path, tmp_path):
    cut = tmp_path / "cut.gguf"
    with open(model_path, "rb") as src:
        cut.write_bytes(src.read(1 << 20))
    err = probe_error(cut, tmp_path)
    assert "cut.gguf" in err, err
