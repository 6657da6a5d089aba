"""The engine's scheduling through the real server: concurrent requests give the same
greedy tokens as the same requests one at a time, also when the KV cache is too small
for all of them at once (sequences are preempted and recomputed); every block is back
in the pool afterwards; a request that can never fit is refused with RESOURCE_EXHAUSTED."""
import threading
import time
import urllib.request

import grpc
import pytest

from conftest import Server
from test_server_e2e import generate

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "List three colors:"]
N = 24


def scrape(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        return {l.split(" ")[0]: float(l.split(" ")[1]) for l in r.read().decode().splitlines()
                if l and not l.startswith("#")}


def run_all(stubs, addr, reqs, concurrent=True):
    """generate() for each request, on a thread each (concurrent) or one after another."""
    out = [None] * len(reqs)

    def work(i):
        out[i] = generate(stubs, addr, **reqs[i])
    if not concurrent:
        for i in range(len(reqs)):
            work(i)
        return out
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return out


def run_concurrently(stubs, addr):
    reqs = [dict(text=p, max_tokens=N, ignore_eos=True) for p in PROMPTS]
    return [r[0] for r in run_all(stubs, addr, reqs)]


@pytest.fixture(scope="module")
def sequential(cpu_server, stubs):
    return [generate(stubs, cpu_server.addr, text=p, max_tokens=N, ignore_eos=True)[0] for p in PROMPTS]


def wait_blocks_free(server):
    deadline = time.time() + 10
    while time.time() < deadline:
        m = scrape(server)
        if m["svdq_kv_cache_blocks_used"] == 0:
            return m
        time.sleep(0.1)
    pytest.fail("KV blocks still in use after every request ended")


def test_concurrent_equals_sequential(cpu_server, stubs, sequential):
    assert run_concurrently(stubs, cpu_server.addr) == sequential
    m = wait_blocks_free(cpu_server)
    assert m["svdq_kv_cache_blocks"] > 0


def test_preemption_keeps_outputs_and_frees_everything(model_path, stubs, sequential):
    # fp32 SmolLM2 keeps 46,080 bytes of K and V per token: 2.2 MB holds 12 blocks of 4 tokens
    # (48 tokens), while the four requests need about 4 x 30 tokens together.
    s = Server(model_path, "cpu", extra=["--kv-cache-bytes", "2300000", "--block-size", "4"])
    try:
        s.wait_ready()
        assert "KV cache 48 tokens" in s.output()
        assert run_concurrently(stubs, s.addr) == sequential
        m = wait_blocks_free(s)
        assert m["svdq_num_preemptions_total"] > 0, "the small cache should have forced preemptions"
        assert m['svdq_request_success_total{finished_reason="length"}'] == len(PROMPTS)
        with pytest.raises(grpc.RpcError) as e:
            generate(stubs, s.addr, text="Hello there", max_tokens=100)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KV cache" in e.value.details()
    finally:
        s.stop()


def test_prefix_cache_reuses_blocks_and_keeps_outputs(cpu_server, stubs, probe, hf_model):
    from conftest import hf_greedy
    stem = ("You are a careful assistant. Answer briefly and precisely, and say when you do not know. "
            "Do not repeat the question, do not apologize, and keep to one sentence unless asked for more. "
            "The question follows.\n")
    first, second = stem + "What is the capital of Italy?", stem + "Name a primary color."
    before = scrape(cpu_server)
    generate(stubs, cpu_server.addr, text=first, max_tokens=4)
    mid = scrape(cpu_server)
    got, _, _ = generate(stubs, cpu_server.addr, text=second, max_tokens=12)
    after = scrape(cpu_server)
    stem_tokens = len(probe("tokenize", stdin=[stem])[0])
    assert stem_tokens >= 32
    hits = after["svdq_prefix_cache_hits_total"] - mid["svdq_prefix_cache_hits_total"]
    assert hits >= (stem_tokens // 16 - 1) * 16, f"only {hits} of the {stem_tokens}-token stem came from the cache"
    assert mid["svdq_prefix_cache_queries_total"] > before["svdq_prefix_cache_queries_total"]
    # The reused blocks give the same tokens as computing everything.
    ids = probe("tokenize", stdin=[second])[0]
    assert got == hf_greedy(hf_model, ids, 12)


def test_batched_steps_and_chunked_prefill_keep_outputs(model_path, stubs, sequential):
    # A 5-token step budget: the four requests' decodes share one forward per step, and each
    # prompt is prefilled in chunks of at most 5 tokens (fewer while others decode).
    s = Server(model_path, "cpu", extra=["--max-batch-tokens", "5", "--max-running", "4"])
    try:
        s.wait_ready()
        before = scrape(s)
        assert run_concurrently(stubs, s.addr) == sequential
        m = wait_blocks_free(s)
        steps = lambda x, phase: sum(v for k, v in x.items()
                                     if k.startswith("svdq_step_duration_seconds_count") and f'phase="{phase}"' in k)
        prefill_steps = steps(m, "prefill") - steps(before, "prefill")
        # The four prompts have about 20 tokens together: at least 4 steps of 5 tokens.
        assert prefill_steps >= 4, prefill_steps
        # Steps advanced several sequences at once: fewer decode steps than decoded tokens.
        assert steps(m, "decode") - steps(before, "decode") < len(PROMPTS) * (N - 1)
    finally:
        s.stop()


def test_preempted_sequences_do_not_fill_the_request_queue(model_path, stubs):
    # The 48-token cache above and at most one waiting request: two requests of 45 tokens
    # each run until the cache is full, then the newer is preempted and waits to be
    # recomputed. That internal wait must not count against --max-waiting: a new request
    # sent meanwhile is queued, not refused (before, it got RESOURCE_EXHAUSTED).
    s = Server(model_path, "cpu", extra=["--kv-cache-bytes", "2300000", "--block-size", "4", "--max-waiting", "1"])
    try:
        s.wait_ready()
        results, errors = {}, {}

        def work(i, **req):
            try:
                results[i] = generate(stubs, s.addr, **req)[2]
            except grpc.RpcError as e:
                errors[i] = e.code()
        threads = []
        for i in range(2):
            threads.append(threading.Thread(target=work, args=(i,), kwargs=dict(text=PROMPTS[i], max_tokens=40,
                                                                                  ignore_eos=True)))
            threads[-1].start()
            deadline = time.time() + 60  # admitted (running) before the next one is sent
            while scrape(s)["svdq_num_requests_running"] < i + 1 and time.time() < deadline:
                time.sleep(0.01)
        deadline = time.time() + 120
        while scrape(s)["svdq_num_preemptions_total"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert scrape(s)["svdq_num_preemptions_total"] > 0, "the small cache should have forced a preemption"
        work(2, text="Hi", max_tokens=2, ignore_eos=True)
        for t in threads:
            t.join(timeout=300)
        assert errors == {}
        assert all(results[i].finish_reason == 2 for i in range(3))  # LENGTH
        wait_blocks_free(s)
    finally:
        s.stop()
