#!/usr/bin/env python3
"""Which page metadata picks the keys that matter, and at what bytes: issue 17's design question,
measured on a real model's queries and keys (transformers on the CPU, the GGUF dequantized to
fp32) before any kernel is written.

A window is prefilled densely into a cache; then the last tokens (natural text: the last --tail
tokens; passkey: the question and the answer, teacher-forced) run again over that cache with
sparse attention. For each layer, KV head and query row, the context before the most recent
--recent tokens is cut into chunks of --chunk tokens; chunk 0 (the attention sink) and the recent
tokens are always kept, and the best chunks by each method's score fill the rest of a --budget
of tokens. The selection is per KV head (what a paged kernel reads), the score the largest over
the KV head's query heads. Methods (metadata per chunk and KV head):

  oracle      the chunk's true attention mass (an upper bound no kernel can store)
  quest       per-channel min and max of the post-RoPE keys, bf16 (Quest): the bound
              sum_c max(q_c min_c, q_c max_c)
  quest8      the same in int8 with a scale per chunk, rounded outward (still a bound)
  mean        the mean post-RoPE key (a landmark), bf16: q . mean
  mean8       the landmark in int8, a scale per chunk
  lowrankR    the landmark's coordinates in the R leading directions of this layer and KV head's
              landmarks (an SVD of the chunk means, as SVDq fits its basis), int8 + a scale
  lowrankkR   the same in the R leading directions of the context's keys themselves (what a
              server can fit from a prompt before any page mean exists)
  questlrR    Quest's per-channel min and max, in the R leading directions of the context's keys
              (int8, outward): sum_r max(qr_r lo_r, qr_r hi_r) with qr the query's coordinates; not
              a bound (the rest of the key is left out), 2 R + 4 bytes a chunk
  subkR       pages of --chunk tokens scored by their sub-chunks of --sub-tokens (16): each
              sub-chunk's mean in the R leading directions of the context's keys (as lowrankkR),
              int8 with one scale per chunk; a chunk's score is its best sub-chunk's (c / 16 * R + 2
              bytes a chunk at 16; the server's --sparse-landmark-subs c / 16)
  sub4kR      the same with int4 coordinates (c / 16 * R / 2 + 2 bytes a chunk)
  subcR       subkR in the R leading directions of the context's keys less their mean (their
              covariance): the uncentred fit spends directions on the keys' common part, which
              adds nearly the same to every chunk's score
  subsR       subkR in the R leading directions of the sub-chunk means less their mean: the
              directions in which the slices differ, which is what a ranking uses. (In the server a
              centred basis of the keys lost every needle at 16k-32k on Qwen2.5-Coder-1.5B, H100,
              2026-12-05: on real keys the mean's direction is part of what ranks pages.)
  twoR        two levels: lowrankR landmarks of groups of 4 chunks shortlist 4x the groups the
              budget needs; lowrankR landmarks of the chunks in the shortlist choose. Only the
              shortlist's chunk landmarks are read, so the metadata read per step is the groups'
              (every group) plus a fixed 4 x budget worth of chunks'

Reported per method: attention mass kept (mean over layers, heads and rows), the attention
output's relative error against dense, the passkey answered (teacher-forced, every answer token
the argmax), metadata bytes per token and KV head, and the attention key compression a 1.25-bit
key page reaches at 128k tokens with a 2,048-token budget: bf16 key bytes / (metadata of every
chunk + codes of the kept tokens).

  .venv/bin/python bench/sparse_selection_study.py --model .models/Qwen2.5-Coder-0.5B-Instruct.gguf \\
      [--window 4096] [--passkeys 8] [--json bench/results/sparse_selection_qwen0.5b.json]
"""
import argparse
import datetime
import json
import os
import platform
import random
import sys
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF conversion's progress bars

ROOT = Path(__file__).resolve().parents[1]
TEXT = "/usr/share/common-licenses/GPL-3"
FILLER = ["/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/MPL-2.0"]


def bf16(x):
    return x.to(torch.bfloat16).to(torch.float32)


def int8_rows(x, outward=0):
    """x [n, d] quantized to int8 with a scale per row; outward -1 / +1 rounds down / up."""
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127.0
    s = bf16(s)
    y = x / s
    y = torch.floor(y) if outward < 0 else torch.ceil(y) if outward > 0 else torch.round(y)
    return y.clamp(-128, 127) * s


class Selector:
    """One configuration of the study: the method, the chunk, the budget and the recent window."""

    def __init__(self, method, chunk, budget, recent):
        self.method, self.chunk, self.budget, self.recent = method, chunk, budget, recent
        self.stats = {"mass": [], "err": []}

    def metadata_bytes_per_token(self, d, context=131072, budget=2048):
        """Metadata read per context token in one step at `context` tokens and a `budget`."""
        c, m = self.chunk, self.method
        if m == "oracle" or m == "dense":
            return 0.0
        if m == "quest":
            return 2 * d * 2 / c
        if m == "quest8":
            return (2 * d + 2 * 2) / c
        if m == "mean":
            return d * 2 / c
        if m == "mean8":
            return (d + 2) / c
        if m.startswith("questlr"):
            return (2 * int(m[7:]) + 4) / c
        if m.startswith("sub4k"):
            return (c // self.SUB * int(m[5:]) / 2 + 2) / c
        if m[:4] in ("subk", "subc", "subs"):
            return (c // self.SUB * int(m[4:]) + 2) / c
        if m.startswith("lowrankk"):
            return (int(m[8:]) + 2) / c
        if m.startswith("lowrank"):
            return (int(m[7:]) + 2) / c
        if m.startswith("two"):
            r = int(m[3:])
            return (r + 2) / (self.GROUP * c) + self.SHORTLIST * budget / c * (r + 2) / context
        raise ValueError(m)

    GROUP, SHORTLIST = 4, 4  # two levels: chunks per group, shortlist over what the budget needs
    SUB = 16  # sub-chunk landmarks: tokens per sub-chunk

    @staticmethod
    def lowrank(x, basis_of, r):
        """x [n, d] as int8 coordinates in the r leading right singular vectors of basis_of [m, d]."""
        _, _, vh = torch.linalg.svd(basis_of, full_matrices=False)  # [min(m, d), d]
        basis = bf16(vh[:r].T)
        return int8_rows(x @ basis) @ basis.T

    def scores(self, q, k, probs, n):
        """q [G, rows, d] (the KV head's query heads), k [T, d] post-RoPE, probs [G, rows, T] dense;
        n chunks. Returns [rows, n]."""
        c = self.chunk
        ch = k[: n * c].view(n, c, -1)
        m = self.method
        if m == "oracle":
            return probs[:, :, : n * c].reshape(probs.shape[0], probs.shape[1], n, c).sum(-1).sum(0)
        if m in ("quest", "quest8"):
            lo, hi = ch.amin(1), ch.amax(1)
            if m == "quest":
                lo, hi = bf16(lo), bf16(hi)
            else:
                lo, hi = int8_rows(lo, -1), int8_rows(hi, +1)
            s = torch.maximum(q.unsqueeze(2) * lo, q.unsqueeze(2) * hi).sum(-1)  # [G, rows, n]
            return s.amax(0)
        if m.startswith("questlr"):
            r = int(m[7:])
            _, _, vh = torch.linalg.svd(k[: n * c], full_matrices=False)
            basis = bf16(vh[:r].T)  # [d, r]
            co = ch @ basis  # [n, c, r]
            lo, hi = int8_rows(co.amin(1), -1), int8_rows(co.amax(1), +1)
            qr = q @ basis  # [G, rows, r]
            return torch.maximum(qr.unsqueeze(2) * lo, qr.unsqueeze(2) * hi).sum(-1).amax(0)
        if m.startswith("sub"):
            four = m.startswith("sub4k")
            r, sub = int(m[5:] if four else m[4:]), min(self.SUB, c)
            subs = ch.view(n, c // sub, sub, -1).mean(2)  # [n, sub-chunks, d]
            fit = k[: n * c]  # subk / sub4k: the keys themselves (their uncentred energy)
            if m.startswith("subc"):  # the keys less their mean: the directions they vary in
                fit = fit - fit.mean(0)
            elif m.startswith("subs"):  # the sub-chunk means less theirs: what tells slices apart
                fit = subs.reshape(-1, subs.shape[-1])
                fit = fit - fit.mean(0)
            _, _, vh = torch.linalg.svd(fit, full_matrices=False)
            basis = bf16(vh[:r].T)  # [d, r]
            co = subs @ basis  # [n, sub-chunks, r]
            top = 7.0 if four else 127.0
            s = bf16(co.abs().amax((1, 2), keepdim=True).clamp_min(1e-12) / top)  # one scale per chunk
            co = (co / s).round().clamp(-top - 1, top) * s
            return torch.einsum("grk,nsk->grns", q @ basis, co).amax(-1).amax(0)
        mean = ch.mean(1)  # [n, d]
        if m == "mean":
            land = bf16(mean)
        elif m == "mean8":
            land = int8_rows(mean)
        elif m.startswith("lowrankk"):
            land = self.lowrank(mean, k[: n * c], int(m[8:]))
        elif m.startswith("lowrank"):
            land = self.lowrank(mean, mean, int(m[7:]))
        else:  # two levels
            r, g = int(m[3:]), self.GROUP
            ng = (n - 1) // g  # whole groups after the sink chunk
            fine = torch.einsum("grd,nd->grn", q, self.lowrank(mean, mean, r)).amax(0)  # [rows, n]
            if ng == 0:
                return fine
            gm = mean[1: 1 + ng * g].view(ng, g, -1).mean(1)
            coarse = torch.einsum("grd,nd->grn", q, self.lowrank(gm, mean, r)).amax(0)  # [rows, ng]
            want = max(1, (self.budget - self.recent - c) // c)
            short = min(ng, -(-self.SHORTLIST * want // g))
            top = coarse.topk(short, dim=-1).indices  # [rows, short]
            allowed = torch.zeros(fine.shape[0], n, dtype=torch.bool)
            idx = (1 + top.unsqueeze(-1) * g + torch.arange(g)).reshape(fine.shape[0], -1)
            allowed.scatter_(1, idx, True)
            allowed[:, 1 + ng * g:] = True  # chunks past the last whole group are scored directly
            return fine.masked_fill(~allowed, float("-inf"))
        return torch.einsum("grd,nd->grn", q, land).amax(0)

    def keep_mask(self, q, k, probs, t0):
        """Which keys each row keeps: [rows, T] bool. Row i is at position t0 + i."""
        rows, T = probs.shape[1], k.shape[0]
        c = self.chunk
        pos = t0 + torch.arange(rows)
        causal = torch.arange(T).unsqueeze(0) <= pos.unsqueeze(1)
        if self.method == "dense":
            return causal
        n = max(0, (t0 - self.recent) // c)  # chunks before the recent tokens (the same for every row)
        keep = causal.clone()
        if n <= 1:
            return keep
        want = max(0, (self.budget - self.recent - c) // c)  # chunks besides the sink
        keep[:, c : n * c] = False
        if want > 0:
            s = self.scores(q, k, probs, n)[:, 1:]  # the sink is kept anyway
            top = s.topk(min(want, n - 1), dim=-1).indices + 1  # [rows, want]
            idx = (top.unsqueeze(-1) * c + torch.arange(c)).reshape(rows, -1)
            keep.scatter_(1, idx, True)
        return keep


CURRENT = None  # the Selector the attention function uses; None: dense


def study_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention for the study (batch 1): dense for the prefill, sparse rows for the tail."""
    B, H, Tq, D = query.shape
    KV, T = key.shape[1], key.shape[2]
    G = H // KV
    t0 = T - Tq
    q = query[0].float().view(KV, G, Tq, D)
    k, v = key[0].float(), value[0].float()
    out = torch.empty(KV, G, Tq, D)
    sel = CURRENT
    pos = t0 + torch.arange(Tq)
    causal = torch.arange(T).unsqueeze(0) <= pos.unsqueeze(1)
    for g in range(KV):
        logits = torch.einsum("grd,td->grt", q[g], k[g]) * scaling
        logits = logits.masked_fill(~causal, float("-inf"))
        probs = logits.softmax(-1)
        dense = probs @ v[g]
        if sel is None:
            out[g] = dense
            continue
        keep = sel.keep_mask(q[g], k[g], probs, t0)
        sp = logits.masked_fill(~keep, float("-inf")).softmax(-1)
        o = sp @ v[g]
        out[g] = o
        sel.stats["mass"].append((probs * keep).sum(-1).mean().item())
        sel.stats["err"].append(((o - dense).norm(dim=-1) / dense.norm(dim=-1).clamp_min(1e-12)).mean().item())
    out = out.view(H, Tq, D).transpose(0, 1).unsqueeze(0).to(query.dtype)  # [B, Tq, H, D]
    return out, None


def load(model_path):
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register("svdq_sparse_study", study_attention)
    AttentionMaskInterface.register("svdq_sparse_study", sdpa_mask)
    p = Path(model_path)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32,
                                                 attn_implementation="svdq_sparse_study")
    model.eval()
    return tok, model


def prefill(model, ids):
    from transformers import DynamicCache
    global CURRENT
    CURRENT = None
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return cache


def tail(model, cache, t0, ids, sel):
    """Runs ids (positions t0 ..) over the cache with selector sel; returns logits [len, V]."""
    global CURRENT
    CURRENT = sel
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True,
                    position_ids=torch.arange(t0, t0 + len(ids)).unsqueeze(0))
    cache.crop(-len(ids))  # back to the prefix
    CURRENT = None
    return out.logits[0]


def passkey_case(tok, rng, window):
    key = str(rng.randrange(10000, 99999))
    filler = " ".join(" ".join(Path(f).read_text().split()) for f in FILLER)
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    question = " What is the pass key? The pass key is"
    budget = window - len(tok(needle + question)["input_ids"]) - 8
    hay = tok(filler)["input_ids"]
    start = rng.randrange(0, max(1, len(hay) - budget))
    hay = hay[start:start + budget]
    depth = rng.uniform(0.1, 0.9)
    cut = int(len(hay) * depth)
    before, after = tok.decode(hay[:cut]), tok.decode(hay[cut:])
    prompt = tok(before + needle + after + question)["input_ids"]
    answer = tok(" " + key)["input_ids"]
    return prompt, answer, depth


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".models" / "Qwen2.5-Coder-0.5B-Instruct.gguf"))
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--tail", type=int, default=32, help="natural text: rows scored sparsely")
    ap.add_argument("--recent", type=int, default=64)
    ap.add_argument("--budgets", default="256,512")
    ap.add_argument("--chunks", default="16,64")
    ap.add_argument("--methods", default="oracle,quest,quest8,mean,mean8,lowrank16,lowrank8")
    ap.add_argument("--passkeys", type=int, default=8)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--sub-tokens", type=int, default=16, help="subkR / sub4kR: tokens a sub-chunk")
    ap.add_argument("--json")
    a = ap.parse_args()
    Selector.SUB = a.sub_tokens
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok, model = load(a.model)
    cfg = model.config
    d = cfg.hidden_size // cfg.num_attention_heads
    configs = [("dense", 0, 0)] + [(m, int(c), int(b)) for b in a.budgets.split(",") for c in a.chunks.split(",")
                                   for m in a.methods.split(",")]
    sels = {cf: Selector(cf[0], max(cf[1], 1), cf[2], a.recent) for cf in configs}
    # Natural text: one window, the last rows sparse.
    text = " ".join(Path(TEXT).read_text().split())
    ids = tok(text)["input_ids"][: a.window]
    t0 = len(ids) - a.tail
    cache = prefill(model, ids[:t0])
    nll = {}
    for cf, sel in sels.items():
        logits = tail(model, cache, t0, ids[t0:], sel)
        lp = torch.log_softmax(logits[:-1].float(), -1)
        nll[cf] = -lp.gather(1, torch.tensor(ids[t0 + 1:]).unsqueeze(1)).mean().item()
        print(f"text {cf}: mass {sum(sel.stats['mass']) / max(1, len(sel.stats['mass'])):.4f} "
              f"err {sum(sel.stats['err']) / max(1, len(sel.stats['err'])):.4f} nll {nll[cf]:.4f}", flush=True)
    text_stats = {cf: dict(mass=sum(s.stats["mass"]) / max(1, len(s.stats["mass"])),
                           err=sum(s.stats["err"]) / max(1, len(s.stats["err"]))) for cf, s in sels.items()}
    # Passkeys: the question and the answer sparse, over a dense prefix holding the needle.
    rng = random.Random(a.seed)
    hits = {cf: 0 for cf in configs}
    for i in range(a.passkeys):
        prompt, answer, depth = passkey_case(tok, rng, a.window)
        q_start = len(prompt) - 12  # the question's tokens
        cache = prefill(model, prompt[:q_start])
        seq = prompt[q_start:] + answer
        for cf in configs:
            sel = Selector(cf[0], max(cf[1], 1), cf[2], a.recent)
            logits = tail(model, cache, q_start, seq, sel)
            n_q = len(prompt) - q_start
            pred = logits[n_q - 1: n_q - 1 + len(answer)].argmax(-1).tolist()
            hits[cf] += int(pred == answer)
        print(f"passkey {i}: depth {depth:.2f}, {len(prompt)} tokens; dense {'hit' if hits[configs[0]] else 'miss'} "
              f"so far {hits[configs[0]]}/{i + 1}", flush=True)
    T, B = 131072, 2048
    rows = []
    for cf in configs:
        m, c, b = cf
        meta = sels[cf].metadata_bytes_per_token(d)
        codes = 1.25 * d / 8  # bytes per token of a 1.25-bit page (scales and means not counted)
        ratio = (2 * d) / (meta + codes * B / T) if m not in ("dense", "oracle") else None
        rows.append(dict(method=m, chunk=c, budget=b, mass=text_stats[cf]["mass"], out_err=text_stats[cf]["err"],
                         text_nll=nll[cf], passkey_hits=hits[cf], passkeys=a.passkeys,
                         meta_bytes_per_token=meta, key_compression_128k_2k=ratio))
    print(f"\n{Path(a.model).name}: window {len(ids)} tokens, {a.tail} sparse rows, recent {a.recent}, "
          f"head dim {d}, {a.passkeys} passkeys of ~{a.window} tokens\n")
    print("| method | chunk | budget | attention mass kept | output rel. error | text NLL | passkey | metadata B/token | key compression at 128k, 2k budget |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['chunk']} | {r['budget']} | {r['mass']:.4f} | {r['out_err']:.4f} | {r['text_nll']:.4f} | "
              f"{r['passkey_hits']}/{r['passkeys']} | {r['meta_bytes_per_token']:.2f} | "
              f"{'-' if r['key_compression_128k_2k'] is None else '%.0fx' % r['key_compression_128k_2k']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(model=Path(a.model).name, window=len(ids), tail=a.tail, recent=a.recent,
                                                sub_tokens=a.sub_tokens,
                                                head_dim=d, date=datetime.date.today().isoformat(),
                                                host=platform.node(), rows=rows), indent=1))


if __name__ == "__main__":
    main()
