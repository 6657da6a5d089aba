"""Why fp8 keys (per token, a scale per 32 channels) wreck Qwen2.5-Coder-1.5B while int4 keys
(per channel over a page) do not: layer 0's key biases (up to +-354), rotated by RoPE, dominate
every 32-channel group of every token, so a per-token scale of absmax / 448 leaves fp8's 3-bit
mantissa to carry them (an error of several units on each), and the query biases (up to 29)
multiply that into logit errors of tens. Per channel over 16 tokens the bias is nearly constant
and cancels out of the range.

Keys and queries are modelled as the GGUF's layer-0 biases plus Gaussian activations (std 2),
RoPE at positions 0..2383 (theta 1e6); logits of the last position's first query group against
every key.  usage: python tools/key_quant_outliers.py [GGUF]
"""
import sys

import gguf
import numpy as np
import torch

path = sys.argv[1] if len(sys.argv) > 1 else ".models/Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
D, T, KV, H = 128, 2384, 2, 12
kb = torch.tensor(np.array(tensors["blk.0.attn_k.bias"].data, dtype=np.float32)).view(KV, D)
qb = torch.tensor(np.array(tensors["blk.0.attn_q.bias"].data, dtype=np.float32)).view(H, D)
inv = 1.0 / (1e6 ** (torch.arange(0, D, 2).float() / D))
ang = torch.arange(T).float()[:, None] * inv[None, :]
cos, sin = torch.cat([ang.cos()] * 2, 1)[:, None, :], torch.cat([ang.sin()] * 2, 1)[:, None, :]


def rope(x):
    return x * cos + torch.cat([-x[..., D // 2:], x[..., : D // 2]], -1) * sin


def per_token(x, qmax, fmt):
    g = x.view(*x.shape[:-1], D // 32, 32)
    s = (g.abs().amax(-1, keepdim=True) / qmax).to(torch.bfloat16).float().clamp_min(1e-30)
    y = (g / s).clamp(-qmax, qmax)
    y = y.to(torch.float8_e4m3fn).float() if fmt == "fp8" else y.round()
    return (y * s).view_as(x)


def per_channel_page(x, bits=4, page=16):
    g = x.view(T // page, page, *x.shape[1:])
    lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    s = ((hi - lo) / (2**bits - 1)).clamp_min(1e-30)
    return ((g - lo) / s).round().mul(s).add(lo).view_as(x)


torch.manual_seed(0)
k = rope(kb[None].expand(T, KV, D) + 2.0 * torch.randn(T, KV, D))
q = rope(qb[None].expand(T, H, D) + 2.0 * torch.randn(T, H, D))
group = H // KV
logits = torch.einsum("hd,td->th", q[-1, :group], k[:, 0]) / D**0.5
print(f"layer 0 key bias absmax {kb.abs().max():.1f}, query bias absmax {qb.abs().max():.1f}; "
      f"logit std over positions {logits.std():.1f}")
for name, kq in [("fp8, per token, scale per 32 channels", per_token(k, 448.0, "fp8")),
                 ("int4, per token, scale per 32 channels", per_token(k, 7.0, "int")),
                 ("int4, per channel over 16-token pages", per_channel_page(k))]:
    err = kq - k
    lq = torch.einsum("hd,td->th", q[-1, :group], kq[:, 0]) / D**0.5
    print(f"{name:40s} key error rms {err.pow(2).mean().sqrt():6.3f} max {err.abs().max():6.2f}; "
          f"logit error rms {(lq - logits).pow(2).mean().sqrt():7.3f} max {(lq - logits).abs().max():7.2f}")
