#!/usr/bin/env python3
"""Serving load generator: N concurrent Generate streams against a running svdq-server (gRPC,
or with --front http the OpenAI-compatible /v1/completions as server-sent events), each
a prompt of about P tokens and M generated tokens (ignore_eos), repeated R rounds. Prints the
generated tokens per second over the whole run, TTFT and per-token latency percentiles, the
steady-state decode rate (tokens that arrived while every stream of a round was decoding, over
that window: prefill excluded), and writes JSON.

  python3 bench/serve_load.py --addr 127.0.0.1:50051 --concurrency 16 --prompt-words 200 --max-tokens 128
  python3 bench/serve_load.py --front http --url http://127.0.0.1:8000 --concurrency 16 ...
"""
import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stubs():
    from grpc_tools import protoc
    out = Path(tempfile.mkdtemp())
    protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
                 str(ROOT / "proto" / "svdq" / "v1" / "generation.proto")])
    sys.path.insert(0, str(out))
    from svdq.v1 import generation_pb2, generation_pb2_grpc
    return generation_pb2, generation_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:50051")
    ap.add_argument("--front", choices=["grpc", "http"], default="grpc")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the HTTP front (with --front http)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--prompt-words", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    import grpc
    pb, pb_grpc = stubs()
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()
    ttft, per_token, generated, streams = [], [], [0], []
    lock = threading.Lock()

    def one_http(i, prompt):
        # A plain HTTP/1.1 client reading the event stream line by line (no SDK in the way).
        import http.client
        from urllib.parse import urlparse
        u = urlparse(a.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        body = json.dumps(dict(prompt=prompt, max_tokens=a.max_tokens, ignore_eos=True, temperature=0, stream=True,
                               stream_options=dict(include_usage=True)))
        t0 = time.perf_counter()
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        first, n, arrivals = None, 0, []
        for line in resp:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
            elif ev["choices"] and ev["choices"][0]["finish_reason"] is None:
                arrivals.append((time.perf_counter(), 1))  # one engine event: one token here (ASCII words)
                if first is None:
                    first = time.perf_counter()
        conn.close()
        return t0, first, n, arrivals

    def one_grpc(prompt):
        with grpc.insecure_channel(a.addr) as ch:
            stub = pb_grpc.GenerationStub(ch)
            t0 = time.perf_counter()
            first, n, arrivals = None, 0, []
            for r in stub.Generate(pb.GenerateRequest(text=prompt, max_tokens=a.max_tokens, ignore_eos=True), timeout=600):
                if r.HasField("chunk"):
                    n += len(r.chunk.token_ids)
                    arrivals.append((time.perf_counter(), len(r.chunk.token_ids)))
                    if first is None:
                        first = time.perf_counter()
        return t0, first, n, arrivals

    def one(i):
        prompt = f"Request {i}: " + " ".join(words[(i + k) % len(words)] for k in range(a.prompt_words))
        t0, first, n, arrivals = one_http(i, prompt) if a.front == "http" else one_grpc(prompt)
        end = time.perf_counter()
        with lock:
            streams.append(arrivals)
            ttft.append(first - t0)
            if n > 1:
                per_token.append((end - first) / (n - 1))
            generated[0] += n

    # Warm-up request (first CUDA kernels, allocator).
    one(-1)
    ttft.clear(); per_token.clear(); generated[0] = 0
    t0 = time.perf_counter()
    steady_tokens, steady_s = 0, 0.0
    for r in range(a.rounds):
        streams.clear()
        threads = [threading.Thread(target=one, args=(r * a.concurrency + i,)) for i in range(a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The window in which every stream had its first token and none had its last.
        lo = max(s[0][0] for s in streams)
        hi = min(s[-1][0] for s in streams)
        if hi > lo:
            steady_tokens += sum(k for s in streams for (t, k) in s if lo < t <= hi)
            steady_s += hi - lo
    wall = time.perf_counter() - t0
    steady = steady_tokens / steady_s if steady_s > 0 else float("nan")
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
    res = dict(label=a.label, front=a.front, concurrency=a.concurrency, rounds=a.rounds, prompt_words=a.prompt_words,
               max_tokens=a.max_tokens, generated=generated[0], wall_s=wall, gen_tokens_per_s=generated[0] / wall,
               ttft_p50_s=statistics.median(ttft), ttft_p90_s=q(ttft, 0.9),
               per_token_p50_s=statistics.median(per_token), per_token_p90_s=q(per_token, 0.9),
               steady_decode_tokens_per_s=steady, steady_window_s=steady_s)
    print(f"{a.label} ({a.front}): concurrency {a.concurrency}: {generated[0]} tokens in {wall:.2f} s = {res['gen_tokens_per_s']:.1f} tok/s; "
          f"TTFT p50 {res['ttft_p50_s'] * 1e3:.0f} ms p90 {res['ttft_p90_s'] * 1e3:.0f} ms; "
          f"per token p50 {res['per_token_p50_s'] * 1e3:.1f} ms p90 {res['per_token_p90_s'] * 1e3:.1f} ms; "
          f"steady decode {steady:.1f} tok/s over {steady_s:.2f} s")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
