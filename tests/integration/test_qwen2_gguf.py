"""GGUF files of the `qwen2` architecture, as llama.cpp's converter writes them (Qwen2.5 from
PyPI packages is served from such files; deploy/fetch-eval-models.sh): written here by the `gguf`
package from a tiny random Qwen2 made by `transformers` (q/k/v biases randomized, output matrix
untied, q/k rows NOT permuted as they are for `llama`), then
  - logits: our loader against transformers' forward of the same weights, CPU fp32, within
    1e-4 of the largest logit per prompt;
  - tokenizer: `tokenizer.ggml.pre = qwen2` (NFC, Qwen2's split regex, byte-level without its
    own regex) against `tokenizers` with the same vocabulary and merges on >= 300 texts."""
import json
import subprocess

import numpy as np
import pytest
import torch
from gguf import GGUFWriter, GGMLQuantizationType

from conftest import BUILD
from hf_checkpoints import KINDS, make_checkpoint, VOCAB
from test_hf_models import PROMPTS, reference_logits
from test_tokenizer_json import QWEN2_RE, byte_level_tokenizer, nfc_texts
from corpus import corpus

PROBE = BUILD / "tools" / "svdq-probe"


def gpt2_byte_tokens():
    """GPT-2's byte -> printable character map: the 256 base tokens of a byte-level vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def add_tokenizer(w, tokens, merges, types, eos, pre="qwen2"):
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(False)


def write_qwen2_gguf(model, path):
    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(KINDS["qwen2"][1]["rope_theta"])  # transformers' own field moved between versions
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokens = gpt2_byte_tokens() + [f"<|x{i}|>" for i in range(VOCAB - 257)] + ["<|im_end|>"]
    add_tokenizer(w, tokens, ["Ġ t"], [1] * 256 + [3] * (VOCAB - 256), VOCAB - 1)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for l in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                key = f"model.layers.{l}.{hf}.{kind}"
                if key in sd:
                    w.add_tensor(f"blk.{l}.{gg}.{kind}", sd[key])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_qwen2_gguf_logits_match_transformers(tmp_path):
    model = make_checkpoint("qwen2", tmp_path / "hf")
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    path = tmp_path / "tiny-qwen2.gguf"
    write_qwen2_gguf(model, path)
    out = tmp_path / "logits.f32"
    r = subprocess.run([str(PROBE), "logits", str(path), str(out)], input=json.dumps(PROMPTS),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ours = np.fromfile(out, dtype=np.float32).reshape(len(PROMPTS), VOCAB)
    ref = reference_logits(model)
    for i, p in enumerate(PROMPTS):
        err = np.abs(ours[i] - ref[i]).max()
        assert err <= 1e-4 * max(1.0, np.abs(ref[i]).max()), f"prompt of {len(p)}: max error {err}"
    # Without the biases the logits would differ: the check can see them.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.bias.zero_()
    assert np.abs(reference_logits(model)[2] - ref[2]).max() > 1e-3


def test_qwen2_gguf_tokenizer_matches_tokenizers(tmp_path):
    from tokenizers import Regex, pre_tokenizers, normalizers
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_level_tokenizer(
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        False, specials, normalizer=normalizers.NFC(), extra_texts=nfc_texts())
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    for a in d["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    types = [3 if t in specials else 4 if t == "[[custom]]" else 1 for t in tokens]
    path = tmp_path / "qwen2-tokenizer.gguf"
    w = GGUFWriter(str(path), "qwen2")
    add_tokenizer(w, tokens, merges, types, vocab["<|im_end|>"])
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    texts = corpus() + ["don'T WE'LL 'S ſ'ſ", "１２３ 4567 89", "a[[custom]]b x<|im_end|> y"] + nfc_texts()
    assert len(texts) >= 300
    r = subprocess.run([str(PROBE), "tokenize", str(path)], input=json.dumps(texts), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout)
    ref = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    bad = [(t, o, f) for t, o, f in zip(texts, ours, ref) if o != f]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0]!r}"
    # The split is Qwen2's (digits one by one), not GPT-2's: the texts exercise the difference.
    gpt2_split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    assert any(len(gpt2_split.pre_tokenize_str(t)) != len(tok.pre_tokenizer.pre_tokenize_str(t)) for t in texts)
