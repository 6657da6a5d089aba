"""Sparse decode attention (--sparse-budget, issue 17): each decode step attends, per sequence and KV
head, to the sink page, the pages whose landmarks score best, the recent pages and the tail, over
SVDq pages (kernels/sparse, the warp-stream SVDq kernel). On the CPU the server refuses the flag
with a clear message (the kernels are CUDA); on the H200 (label gpu): a budget that covers the
context gives dense SVDq's tokens exactly (every page chosen, the same kernel), a small budget
serves long prompts concurrently and reads several times fewer key bytes (metrics, GetServerInfo),
and bad budgets and modes are refused at start."""
import grpc
import pytest

from conftest import Server
from test_engine_scheduling import run_all, scrape
from test_server_e2e import generate

MODEL = "synthetic:smollm2-135m"  # 9 query / 3 KV heads of 64, random weights
SVDQ = ["--key-mode", "svdq", "--svdq-schedule", "4,2,2,1,1,0,0,0", "--kv-cache-bytes", "2G", "--max-running", "8"]


def refused(model, device, extra):
    s = Server(model, device, extra=extra)
    try:
        assert s.proc.wait(timeout=120) != 0, "the server should refuse to start"
        return s.output()
    finally:
        s.stop()


def test_sparse_budget_without_cuda_is_refused(model_path):
    out = refused(model_path, "cpu", ["--key-mode", "svdq", "--sparse-budget", "2048"])
    assert "--sparse-budget needs a bf16 model on a CUDA device" in out


def long_prompt(n):
    """n token ids of varied text (a synthetic model's vocabulary is the bundled tokenizer's)."""
    return [(i * 7919 + 13) % 40000 + 100 for i in range(n)]


def server_info(stubs, addr):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(addr) as ch:
        return pb_grpc.GenerationStub(ch).GetServerInfo(pb.GetServerInfoRequest())


@pytest.mark.gpu
def test_a_budget_covering_the_context_gives_dense_tokens_gpu(stubs):
    pb, _ = stubs
    reqs = [dict(token_ids=pb.TokenIds(ids=long_prompt(n)), max_tokens=48, ignore_eos=True) for n in (700, 1300)]
    results = {}
    for budget in ("0", "8192"):
        s = Server(MODEL, "cuda", extra=SVDQ + ["--sparse-budget", budget])
        try:
            s.wait_ready()
            assert "decode steps from CUDA graphs" in s.output()
            results[budget] = run_all(stubs, s.addr, reqs, concurrent=False)
            assert server_info(stubs, s.addr).sparse_budget == int(budget)
        finally:
            s.stop()
    for r, dense, sparse in zip(reqs, results["0"], results["8192"]):
        assert sparse[0] == dense[0], f"{len(r['token_ids'].ids)}-token prompt: sparse {sparse[0]} != dense {dense[0]}"


@pytest.mark.gpu
def test_a_small_budget_serves_long_prompts_and_reads_fewer_key_bytes_gpu(stubs):
    pb, _ = stubs
    reqs = [dict(token_ids=pb.TokenIds(ids=long_prompt(6000 + 97 * i)), max_tokens=64, ignore_eos=True)
            for i in range(6)]
    ratio, info = {}, {}
    for budget in ("0", "256"):
        s = Server(MODEL, "cuda", extra=SVDQ + ["--sparse-budget", budget])
        try:
            s.wait_ready()
            got = run_all(stubs, s.addr, reqs, concurrent=True)
            for ids, _, final in got:
                assert final.finish_reason == pb.FINISH_REASON_LENGTH and len(ids) == 64
            m = scrape(s)
            ratio[budget] = m["svdq_attention_key_bytes_bf16_total"] / m["svdq_attention_key_bytes_read_total"]
            info[budget] = server_info(stubs, s.addr)
        finally:
            s.stop()
    # ~6,000-token contexts of 16-token pages (kv_modes.h DecodeKeyBytesRead): dense SVDq at 1.25
    # bits reads its 320-byte pages and 10.5 KB of basis per KV head and layer, ~5.5x less than bf16;
    # sparse at 256 tokens, 16 pages, the basis and every page's 68-byte landmark: ~3x less again.
    assert ratio["0"] > 4
    assert ratio["256"] > 2.5 * ratio["0"], ratio
    assert info["256"].sparse_budget == 256
    assert info["256"].attention_key_compression > 2.5 * info["0"].attention_key_compression


@pytest.mark.gpu
def test_bad_sparse_budgets_and_modes_are_refused_gpu():
    out = refused(MODEL, "cuda", SVDQ + ["--sparse-budget", "100"])
    assert "leaves no page to choose" in out and "at least 160" in out
    out = refused(MODEL, "cuda", ["--key-mode", "bf16", "--sparse-budget", "2048"])
    assert "sparse attention needs page-coded keys" in out
    out = refused(MODEL, "cuda", SVDQ + ["--value-mode", "int4", "--sparse-budget", "2048"])
    assert "--sparse-budget needs bf16 values" in out
    out = refused(MODEL, "cuda", SVDQ + ["--block-size", "48", "--sparse-budget", "2048"])
    assert "--sparse-budget needs a block size of 16 tokens times a power of two" in out
