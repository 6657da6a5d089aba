"""Overlapped decode steps (--overlap-steps, engine.cc): a step is launched from the device-side ids
of the step before, and that step's text, stop checks and events are done while it runs. A
sequence that ends with the token read late has its row in the launched step discarded. On the
CPU the same path runs (that is what CI covers); it must not change any output: the requests below
(greedy, seeded sampling, a stop string that ends one sequence while others go on, min_tokens,
and the rows that cannot run ahead, logprobs and penalties) give the same tokens, text, finish and
reported KV bytes as one at a time without overlap."""
import time

import pytest

from conftest import Server
from test_engine_scheduling import run_all as run_requests, scrape, wait_blocks_free
from test_server_e2e import generate

PROMPT = "Once upon a time, in a small village by the sea,"
# Every token takes a block: a row launched ahead and then discarded always took a fresh one.
ONE_TOKEN_BLOCKS = ["--block-size", "1"]


def requests(stop_text):
    return [
        dict(text=PROMPT, max_tokens=24, ignore_eos=True),
        dict(text="The capital of France is", max_tokens=5, ignore_eos=True),
        dict(text="List three colors:", max_tokens=20, ignore_eos=True,
             sampling=dict(temperature=0.8, top_p=0.9, seed=7)),
        dict(text=PROMPT, max_tokens=30, ignore_eos=True, stop=[stop_text]),
        dict(text="def fibonacci(n):", max_tokens=40, min_tokens=8),
        dict(text="Hello, my name is", max_tokens=10, ignore_eos=True, logprobs=2),
        dict(text="Write a list of fruits:", max_tokens=12, ignore_eos=True,
             sampling=dict(repetition_penalty=1.3)),
    ]


def outcome(result):
    ids, text, final = result
    # The KV bytes a sequence held: a row launched ahead and discarded must not count its block.
    return (ids, text, final.finish_reason, final.stop_reason, final.usage.completion_tokens,
            final.usage.kv_bytes_stored)


def run_all(stubs, addr, reqs, concurrent):
    return [outcome(r) for r in run_requests(stubs, addr, reqs, concurrent)]


@pytest.fixture(scope="module")
def baseline(model_path, stubs):
    s = Server(model_path, "cpu", extra=["--overlap-steps", "false"] + ONE_TOKEN_BLOCKS)
    try:
        s.wait_ready()
        # A stop string from the middle of the long greedy output, found nowhere before it: the
        # fourth request then stops after ~20 tokens, while the 24- and 40-token ones go on.
        text = generate(stubs, s.addr, text=PROMPT, max_tokens=30, ignore_eos=True)[1]
        at = len(text) * 2 // 3
        stop = next(text[i:i + 4] for i in range(at, len(text) - 4) if text[i:i + 4] not in text[:i + 3])
        reqs = requests(stop)
        want = run_all(stubs, s.addr, reqs, concurrent=False)
        m = scrape(s)
        assert m["svdq_decode_steps_ahead_total"] == 0, "--overlap-steps false must not run ahead"
        yield reqs, want
    finally:
        s.stop()


@pytest.fixture(scope="module")
def overlapped(model_path):
    s = Server(model_path, "cpu", extra=ONE_TOKEN_BLOCKS)
    s.wait_ready()
    yield s
    s.stop()


def test_overlapped_steps_keep_every_output(overlapped, stubs, baseline):
    cpu_server = overlapped
    reqs, want = baseline
    stopped = want[3]
    assert stopped[3] and stopped[4] < 30, "the stop string should end the fourth request early"
    before = scrape(cpu_server)
    got = run_all(stubs, cpu_server.addr, reqs, concurrent=True)
    for r, g, w in zip(reqs, got, want):
        assert g == w, f"{r}: overlapped {g} != one at a time without overlap {w}"
    m = wait_blocks_free(cpu_server)
    ahead = m["svdq_decode_steps_ahead_total"] - before.get("svdq_decode_steps_ahead_total", 0)
    assert ahead > 0, "no step was launched ahead"
    # Sequential requests: each one's last greedy token is read after the step past it was
    # launched, unless its length ended it (never launched); the stop string ends one that way.
    one = run_all(stubs, cpu_server.addr, [reqs[3]], concurrent=False)
    assert one == [want[3]]
    # The engine counts the discarded row after it has sent the final event: poll a while (a
    # scrape right after the stream ended raced it on a loaded machine).
    deadline = time.time() + 10
    while True:
        m2 = scrape(cpu_server)
        if m2["svdq_decode_rows_discarded_total"] > m["svdq_decode_rows_discarded_total"] or time.time() > deadline:
            break
        time.sleep(0.05)
    assert m2["svdq_decode_rows_discarded_total"] > m["svdq_decode_rows_discarded_total"], \
        "the stop string's sequence should have had its launched-ahead row discarded"


@pytest.mark.gpu
@pytest.mark.parametrize("key_mode", ["bf16", "svdq"])
def test_overlapped_graph_steps_keep_every_output_gpu(stubs, key_mode):
    # CUDA graph steps launched from the device-side ids, on a synthetic model of SmolLM2's shape:
    # one request at a time (so that every step is the batch-1 graph in both servers and bf16
    # numerics cannot differ), the same outputs with and without overlap.
    model = "synthetic:smollm2-135m"
    common = ["--key-mode", key_mode, "--kv-cache-bytes", "2G", "--max-running", "8"]
    results, metrics = {}, {}
    for overlap in ("false", "true"):
        s = Server(model, "cuda", extra=common + ["--overlap-steps", overlap])
        try:
            s.wait_ready()
            assert "decode steps from CUDA graphs" in s.output()
            first = generate(stubs, s.addr, text=PROMPT, max_tokens=40, ignore_eos=True)[0]
            stop_id = next(t for i, t in enumerate(first) if i >= 15 and t not in first[:i])
            reqs = [
                dict(text=PROMPT, max_tokens=40, ignore_eos=True),
                dict(text=PROMPT, max_tokens=40, ignore_eos=True, stop_token_ids=[stop_id]),
                dict(text="List three colors:", max_tokens=30, ignore_eos=True,
                     sampling=dict(temperature=0.9, seed=11)),
                dict(text="Hello, my name is", max_tokens=10, ignore_eos=True, logprobs=1),
                dict(text="def fibonacci(n):", max_tokens=40, min_tokens=5),
            ]
            results[overlap] = [first] + run_all(stubs, s.addr, reqs, concurrent=False)
            metrics[overlap] = scrape(s)
        finally:
            s.stop()
    assert results["true"] == results["false"]
    assert metrics["false"]["svdq_decode_steps_ahead_total"] == 0
    assert metrics["true"]["svdq_decode_steps_ahead_total"] > 100
    assert metrics["true"]["svdq_decode_rows_discarded_total"] >= 1  # the stop token's sequence
