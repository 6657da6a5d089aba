#!/usr/bin/env python3
"""What each KV cache mode costs in quality, measured through the running server: perplexity of
natural text scored exactly (prompt_logprobs_chunk 0: every mode gives the same number) and
through the cache as served (prompt_logprobs_chunk N: the text is prefilled N tokens at a time,
each chunk attending over the stored, quantized or SVDq-encoded form of the earlier ones, as
decode does). One server per mode; texts are Debian's license files, cut into windows.

  .venv/bin/python bench/kv_fidelity.py [--device cpu] [--chunk 32] [--windows 4]
        [--model PATH] [--only SUBSTRING] [--json bench/results/kv_fidelity_cpu.json]
        [--first-chunk F] [--texts PATH,PATH]

--first-chunk F (prompt_logprobs_first_chunk): each window's first F tokens are prefilled in one
piece and only the tokens after them are scored (exactly and through the cache); with --chunk 1
every one of those is a decode step over the stored cache, so sparse attention (--sparse-budget)
is scored as it serves. The first piece is never shorter than the chunk or the server's
--svdq-basis-tokens (256 by default), so give F at least that. The last column compares each
mode with the first one listed.

SVDq runs with each sequence's prefill basis (fitted on its first min(window, 256) tokens, the
server's --svdq-basis-tokens, which are scored in one piece: only the tokens after them read
SVDq pages, so use windows well past 256 tokens) and with a basis calibrated once on another
text (2,048 tokens of MPL-2.0); --only keeps the modes whose flags contain SUBSTRING.

Prints a Markdown table: perplexity exact, through the cache, and the change in percent, and the
mean absolute change in per-token log-probability (nats) against the exact scores."""
import argparse
import datetime
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

MODES = [  # key mode, value mode, extra flags
    ("bf16", "bf16", []),
    ("fp8", "bf16", []),
    ("int4", "bf16", []),
    ("int2", "bf16", []),
    ("svdq", "bf16", ["--svdq-schedule", "8,8,8,8,8,8,8,8"]),
    ("svdq", "bf16", ["--svdq-schedule", "8,4,2,1,1,0,0,0"]),
    ("svdq", "bf16", ["--svdq-schedule", "8,2,0,0,0,0,0,0"]),
    # Layer scope (one basis per layer over the KV heads concatenated): the lowest key error in
    # bench/svdq_study on both Qwen models.
    ("svdq", "bf16", ["--svdq-schedule", "8,4,2,1,1,0,0,0", "--svdq-scope", "layer"]),
    ("svdq", "bf16", ["--svdq-schedule", "4,2,2,1,1,0,0,0", "--svdq-scope", "layer"]),
    ("bf16", "fp8", []),
    ("bf16", "int8", []),
    ("bf16", "int4", []),
    ("svdq", "int4", ["--svdq-schedule", "8,4,2,1,1,0,0,0"]),
    ("int2", "int4", []),
]
TEXTS = ["/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/GPL-3"]
# The calibrated SVDq basis (tools/svdq_calibrate) comes from another text, so that it is not
# fitted to what is scored.
CALIBRATION_TEXT = "/usr/share/common-licenses/MPL-2.0"
CALIBRATED = ["8,8,8,8,8,8,8,8", "8,4,2,1,1,0,0,0", "8,2,0,0,0,0,0,0"]


def windows(n_per_text, chars, texts=TEXTS, concat=False):
    """n_per_text windows of `chars` characters from each text (from the texts joined, with concat:
    long windows out of short files)."""
    out = []
    bodies = [" ".join(Path(path).read_text(encoding="utf-8").split()) for path in texts]  # one line, single spaces
    for text in ([" ".join(bodies)] if concat else bodies):
        for i in range(n_per_text):
            w = text[i * chars:(i + 1) * chars]
            if len(w) == chars:
                out.append(w)
    return out


def own_modes(text):
    """(key, value, extra flags) of each mode in eval_quality's syntax."""
    sys.path.insert(0, str(ROOT / "bench"))
    from eval_quality import parse_mode
    out = []
    for mode in text.split(";"):
        flags = parse_mode(mode)  # --key-mode K --value-mode V, then the rest
        out.append((flags[1], flags[3], flags[4:]))
    return out


def calibrated_modes(model, out):
    """The built-in list, plus SVDq with a basis calibrated on CALIBRATION_TEXT."""
    import subprocess
    import conftest
    basis = out / "calibrated.svdq-basis"
    r = subprocess.run([str(conftest.BUILD / "tools" / "svdq_calibrate"), str(model), "--text", CALIBRATION_TEXT,
                        "--tokens", "2048", "--out", str(basis)], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit("svdq_calibrate failed: " + r.stderr)
    return MODES + [("svdq", "bf16", ["--svdq-schedule", s, "--svdq-basis", "calibrated", "--svdq-basis-file", str(basis)])
                    for s in CALIBRATED]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--windows", type=int, default=4, help="windows per text")
    ap.add_argument("--chars", type=int, default=2000, help="characters per window")
    ap.add_argument("--model", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--modes", default=None,
                    help="instead of the built-in list: modes as bench/eval_quality.py takes them, "
                         "keys_values[@schedule][|flags] separated by ';' (no calibration run)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds for one window's scoring call")
    ap.add_argument("--first-chunk", type=int, default=0,
                    help="prefill each window's first F tokens in one piece and score only the tokens after them")
    ap.add_argument("--texts", default=None, help="comma-separated text files to cut windows from (default: "
                    + ", ".join(TEXTS) + ")")
    ap.add_argument("--kv-cache-bytes", default="256M")
    ap.add_argument("--concat", action="store_true", help="cut --windows windows from the texts joined into one")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "kv_fidelity_cpu.json"))
    a = ap.parse_args()
    import conftest
    from conftest import Server
    import grpc
    pb, pb_grpc = conftest.generate_stubs()
    out = Path(tempfile.mkdtemp())
    model = Path(a.model) if a.model else conftest.MODEL
    text_files = a.texts.split(",") if a.texts else TEXTS
    texts = windows(a.windows, a.chars, text_files, a.concat)
    if not texts:
        raise SystemExit(f"no window of {a.chars} characters in {text_files}")
    modes = own_modes(a.modes) if a.modes else calibrated_modes(model, out)
    if a.only:
        modes = [m for m in modes if a.only in " ".join([m[0], m[1], *m[2]])]

    def score(stub, text, chunk):
        first = a.first_chunk if chunk > 0 else 0
        for r in stub.Generate(pb.GenerateRequest(text=text, max_tokens=1, prompt_logprobs=True,
                                                  prompt_logprobs_chunk=chunk, prompt_logprobs_first_chunk=first),
                               timeout=a.timeout):
            if r.HasField("chunk") and len(r.chunk.prompt_logprobs):
                lp = list(r.chunk.prompt_logprobs)  # tokens 1 .. n-1
                if a.first_chunk > 0 and len(lp) <= a.first_chunk:
                    raise SystemExit(f"a window of {len(lp) + 1} tokens has none after the first chunk of {a.first_chunk}")
                return lp[max(a.first_chunk - 1, 0):]  # the tokens after the first chunk
        raise RuntimeError("no prompt logprobs")

    rows, exact = [], None
    for key, value, extra in modes:
        s = Server(model, a.device, extra=["--key-mode", key, "--value-mode", value, "--kv-cache-bytes", a.kv_cache_bytes,
                                           "--max-running", "2", *extra])
        try:
            s.wait_ready(timeout=600)
            with grpc.insecure_channel(s.addr) as ch:
                stub = pb_grpc.GenerationStub(ch)
                info = stub.GetServerInfo(pb.GetServerInfoRequest())
                if exact is None:  # exact scoring ignores the cache: the same in every mode
                    exact = [score(stub, t, 0) for t in texts]
                t0 = time.time()
                cached = [score(stub, t, a.chunk) for t in texts]
                seconds = time.time() - t0
        finally:
            s.stop()
        ex = [x for w in exact for x in w]
        ca = [x for w in cached for x in w]
        ppl_exact, ppl_cache = math.exp(-sum(ex) / len(ex)), math.exp(-sum(ca) / len(ca))
        row = dict(key_mode=info.key_mode, value_mode=info.value_mode, flags=" ".join(extra),
                   key_bytes_per_token=info.key_bytes_per_token,
                   value_bytes_per_token=info.value_bytes_per_token, key_compression=info.key_compression_ratio,
                   tokens=len(ex), ppl_exact=ppl_exact, ppl_cache=ppl_cache, scoring_seconds=seconds,
                   sparse_budget=info.sparse_budget, attention_key_compression=info.attention_key_compression,
                   ppl_change_pct=100.0 * (ppl_cache / ppl_exact - 1.0),
                   mean_abs_logprob_change=sum(abs(x - y) for x, y in zip(ca, ex)) / len(ex))
        rows.append(row)
        print(row, file=sys.stderr)
    meta = dict(date=datetime.date.today().isoformat(), host=platform.node(), device=a.device, model=model.name,
                chunk=a.chunk, first_chunk=a.first_chunk, texts=text_files, concat=a.concat, windows_per_text=a.windows,
                chars_per_window=a.chars,
                command=" ".join(sys.argv))
    Path(a.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    after = f", after a first chunk of {a.first_chunk}" if a.first_chunk else ""
    print(f"{model.name}, {rows[0]['tokens']} scored tokens{after}, chunks of {a.chunk}, device {a.device}\n")
    print("| keys | values | key compression | ppl exact | ppl through the cache | change | mean abs logprob change (nats) "
          "| vs the first mode |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        vs = 100.0 * (r["ppl_cache"] / rows[0]["ppl_cache"] - 1.0)
        print(f"| {r['key_mode']}{(' ' + r['flags']) if r['flags'] else ''} | {r['value_mode']} | {r['key_compression']:.2f}x | {r['ppl_exact']:.3f} | "
              f"{r['ppl_cache']:.3f} | {r['ppl_change_pct']:+.2f}% | {r['mean_abs_logprob_change']:.4f} | {vs:+.2f}% |")


if __name__ == "__main__":
    main()
