#!/usr/bin/env python3
"""Soak: mixed traffic against one server for a long time, watching for leaks (issue 15).

Client threads loop until the deadline over a mix of requests: plain and streamed generations
of random lengths, chat, stop strings, penalties and seeds, prompt log-probabilities (exact and
through the cache), streams cancelled after a few chunks, requests aborted by id from another
call, and invalid requests (which must fail with INVALID_ARGUMENT and change nothing). Every
--sample seconds the server's resident memory (/proc/PID/status VmRSS) and its metrics (KV
blocks used, running and waiting requests) are recorded. At the end the traffic stops, the
server must return to 0 KV blocks and 0 running / waiting, and the RSS slope over the run
(after a warm-up) and over its second half is fitted by least squares and reported in MiB per
hour; target flat.

  .venv/bin/python bench/soak.py [--minutes 30] [--clients 6] [--device cpu] [--model PATH]
        [--json bench/results/soak_cpu.json]

Not a test (it takes half an hour); the result is recorded in bench/results."""
import argparse
import datetime
import json
import platform
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no what up out who said will about "
         "cache page key value token model server request stream batch latency memory").split()


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def slope_per_hour(points):
    """Least-squares slope of (seconds, value) points, per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return sxy / sxx * 3600.0 if sxx > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=120.0, help="seconds left out of the slope")
    ap.add_argument("--server-args", default="--kv-cache-bytes 128M --max-running 8 --max-waiting 64")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "soak_cpu.json"))
    a = ap.parse_args()
    import conftest
    from conftest import Server
    from test_engine_scheduling import scrape
    import grpc
    pb, pb_grpc = conftest.generate_stubs()

    model = Path(a.model) if a.model else conftest.MODEL
    server = Server(model, a.device, extra=a.server_args.split())
    server.wait_ready(timeout=600)
    deadline = time.time() + 60.0 * a.minutes
    counts, lock, failures = {}, threading.Lock(), []

    def count(kind):
        with lock:
            counts[kind] = counts.get(kind, 0) + 1

    def text(rng, n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    def client(seed):
        rng = random.Random(seed)
        with grpc.insecure_channel(server.addr) as ch:
            stub = pb_grpc.GenerationStub(ch)
            while time.time() < deadline:
                kind = rng.choice(["plain", "plain", "stream_cancel", "abort", "chat", "penalties", "logprobs",
                                   "stop", "invalid"])
                rid = f"soak-{seed}-{rng.getrandbits(40):x}"
                req = pb.GenerateRequest(request_id=rid, text=text(rng, rng.randint(3, 300)),
                                         max_tokens=rng.randint(1, 48), ignore_eos=rng.random() < 0.5)
                try:
                    if kind == "chat":
                        req = pb.GenerateRequest(request_id=rid, max_tokens=rng.randint(1, 32), chat=pb.ChatMessages(
                            messages=[pb.ChatMessage(role="user", content=text(rng, rng.randint(1, 60)))]))
                    elif kind == "penalties":
                        req.sampling.CopyFrom(pb.SamplingParams(temperature=0.8, seed=rng.getrandbits(31),
                                                                repetition_penalty=1.2, frequency_penalty=0.5,
                                                                presence_penalty=0.3, top_p=0.9))
                    elif kind == "logprobs":
                        req.prompt_logprobs = True
                        req.prompt_logprobs_chunk = rng.choice([0, 0, 16, 64])
                        req.logprobs = rng.randint(0, 5)
                    elif kind == "stop":
                        req.stop.extend([rng.choice(WORDS), "\n"])
                    elif kind == "invalid":
                        req.sampling.CopyFrom(pb.SamplingParams(top_p=2.0))
                    if kind == "stream_cancel":
                        call = stub.Generate(req, timeout=300)
                        for i, _ in enumerate(call):
                            if i >= rng.randint(0, 5):
                                call.cancel()
                                break
                    elif kind == "abort":
                        call = stub.Generate(req, timeout=300)
                        threading.Timer(rng.uniform(0.0, 0.5),
                                        lambda: stub.Abort(pb.AbortRequest(request_id=rid), timeout=10)).start()
                        for _ in call:
                            pass
                    else:
                        for _ in stub.Generate(req, timeout=300):
                            pass
                    count(kind)
                except grpc.RpcError as e:
                    code = e.code()
                    if kind == "invalid" and code == grpc.StatusCode.INVALID_ARGUMENT:
                        count(kind)
                    elif kind in ("stream_cancel", "abort") and code == grpc.StatusCode.CANCELLED:
                        count(kind)
                    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        count("queue_full")
                    else:
                        with lock:
                            failures.append(f"{kind}: {code} {e.details()}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(a.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    samples = []
    try:
        while time.time() < deadline:
            m = scrape(server)
            samples.append(dict(t=time.time() - t0, rss_mib=rss_mib(server.proc.pid),
                                kv_blocks_used=m.get("svdq_kv_cache_blocks_used"),
                                running=m.get("svdq_num_requests_running"),
                                waiting=m.get("svdq_num_requests_waiting")))
            print(samples[-1], dict(counts), file=sys.stderr, flush=True)
            time.sleep(a.sample)
        for t in threads:
            t.join(timeout=330)
        time.sleep(2)
        idle = None
        for _ in range(100):
            m = scrape(server)
            idle = dict(kv_blocks_used=m.get("svdq_kv_cache_blocks_used"), running=m.get("svdq_num_requests_running"),
                        waiting=m.get("svdq_num_requests_waiting"))
            if not any(idle.values()):
                break
            time.sleep(0.1)
        final_rss = rss_mib(server.proc.pid)
        alive = server.proc.poll() is None
    finally:
        rc = server.stop()
    steady = [(s["t"], s["rss_mib"]) for s in samples if s["t"] >= a.warmup]
    summary = dict(date=datetime.date.today().isoformat(), host=platform.node(), device=a.device, model=model.name,
                   minutes=a.minutes, clients=a.clients, server_args=a.server_args, requests=dict(counts),
                   failures=failures[:50], failure_count=len(failures), server_alive_at_end=alive, exit_code=rc,
                   idle_after=idle, rss_first_after_warmup_mib=steady[0][1] if steady else None,
                   rss_last_mib=final_rss, rss_peak_mib=max(s["rss_mib"] for s in samples),
                   rss_slope_mib_per_hour=slope_per_hour(steady),
                   rss_slope_second_half_mib_per_hour=slope_per_hour(steady[len(steady) // 2:]),
                   command=" ".join(sys.argv))
    Path(a.json).write_text(json.dumps(dict(summary=summary, samples=samples), indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
