"""Sparse decode attention (--sparse-budget, issue 17): each decode step attends, per sequence and KV
head, to the sink page, the pages whose landmarks score best, the recent pages and the tail, over
SVDq pages (kernels/sparse, the warp-stream SVDq kernel on CUDA; on the CPU the same selection and
attention in ATen ops, PagedSeqView::AttendSparse). On both: a budget that covers the context gives
dense SVDq's tokens exactly (every page chosen), a small budget serves long prompts concurrently and
reads several times fewer key bytes (metrics, GetServerInfo), and bad budgets and modes are refused
at start. The CPU tests run in CI; the CUDA ones (label gpu) on the H200."""
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


def long_prompt(n):
    """n token ids of varied text (a synthetic model's vocabulary is the bundled tokenizer's)."""
    return [(i * 7919 + 13) % 40000 + 100 for i in range(n)]


def server_info(stubs, addr):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(addr) as ch:
        return pb_grpc.GenerationStub(ch).GetServerInfo(pb.GetServerInfoRequest())


def covering_budget_gives_dense_tokens(stubs, device, lengths, max_tokens):
    pb, _ = stubs
    reqs = [dict(token_ids=pb.TokenIds(ids=long_prompt(n)), max_tokens=max_tokens, ignore_eos=True) for n in lengths]
    results = {}
    # Dense, and a covering budget with landmarks over the head dim, of rank 16, and four of rank 4
    # a page (one a slice of 4 tokens).
    for name, flags in (("0", ["--sparse-budget", "0"]), ("8192", ["--sparse-budget", "8192"]),
                        ("8192r16", ["--sparse-budget", "8192", "--sparse-landmark-rank", "16"]),
                        ("8192s4r4", ["--sparse-budget", "8192", "--sparse-landmark-rank", "4", "--sparse-landmark-subs", "4"])):
        s = Server(MODEL, device, extra=SVDQ + flags)
        try:
            s.wait_ready()
            if device == "cuda":
                assert "decode steps from CUDA graphs" in s.output()
            results[name] = run_all(stubs, s.addr, reqs, concurrent=False)
            assert server_info(stubs, s.addr).sparse_budget == int(flags[1])
        finally:
            s.stop()
    for name in ("8192", "8192r16", "8192s4r4"):
        for r, dense, sparse in zip(reqs, results["0"], results[name]):
            assert len(sparse[0]) == max_tokens
            assert sparse[0] == dense[0], f"{name}, {len(r['token_ids'].ids)}-token prompt: sparse {sparse[0]} != dense {dense[0]}"


def test_a_budget_covering_the_context_gives_dense_tokens_cpu(stubs):
    covering_budget_gives_dense_tokens(stubs, "cpu", (300, 700), 24)


@pytest.mark.gpu
def test_a_budget_covering_the_context_gives_dense_tokens_gpu(stubs):
    covering_budget_gives_dense_tokens(stubs, "cuda", (700, 1300), 48)


# Configurations of small_budget_reads_fewer_key_bytes: dense, a 256-token budget with landmarks
# over the head dim, the same with rank-16 landmarks (--sparse-landmark-rank), with four rank-2
# landmarks a page (--sparse-landmark-subs), and with those and the first 3 of the model's 30
# layers dense (--sparse-dense-layers).
S4R2 = ["--sparse-landmark-rank", "2", "--sparse-landmark-subs", "4"]
BUDGETS = {"0": ["--sparse-budget", "0"], "256": ["--sparse-budget", "256"],
           "256r16": ["--sparse-budget", "256", "--sparse-landmark-rank", "16"],
           "256s4r2": ["--sparse-budget", "256"] + S4R2,
           "256s4r2d3": ["--sparse-budget", "256"] + S4R2 + ["--sparse-dense-layers", "3"]}


def small_budget_reads_fewer_key_bytes(stubs, device, prompts, max_tokens):
    """Serves `prompts` (token counts) at once in each of BUDGETS; returns the key compression (bf16
    key bytes / key bytes read, from the metrics) of each, and each one's GetServerInfo and tokens."""
    pb, _ = stubs
    reqs = [dict(token_ids=pb.TokenIds(ids=long_prompt(n)), max_tokens=max_tokens, ignore_eos=True) for n in prompts]
    ratio, info, tokens = {}, {}, {}
    for budget, flags in BUDGETS.items():
        s = Server(MODEL, device, extra=SVDQ + flags)
        try:
            s.wait_ready()
            got = run_all(stubs, s.addr, reqs, concurrent=True)
            for ids, _, final in got:
                assert final.finish_reason == pb.FINISH_REASON_LENGTH and len(ids) == max_tokens
            m = scrape(s)
            ratio[budget] = m["svdq_attention_key_bytes_bf16_total"] / m["svdq_attention_key_bytes_read_total"]
            info[budget] = server_info(stubs, s.addr)
            tokens[budget] = [ids for ids, _, _ in got]
        finally:
            s.stop()
    assert info["256"].sparse_budget == 256 and info["256"].sparse_landmark_rank == 0
    assert info["256r16"].sparse_budget == 256 and info["256r16"].sparse_landmark_rank == 16
    assert info["256r16"].sparse_landmark_subs == 1
    assert info["256s4r2"].sparse_landmark_rank == 2 and info["256s4r2"].sparse_landmark_subs == 4
    assert info["256s4r2"].sparse_dense_layers == 0 and info["256s4r2d3"].sparse_dense_layers == 3
    # A landmark basis is fitted on a sequence's first min(prompt, N) tokens: N = 8,192 by default,
    # capped at what the scheduler can hold a first chunk to (2,048 tokens a step less 8 decodes);
    # mean-key landmarks have no basis.
    assert info["256r16"].sparse_landmark_basis_tokens == 2040 and info["256"].sparse_landmark_basis_tokens == 0
    return ratio, info, tokens


def test_a_small_budget_serves_long_prompts_and_reads_fewer_key_bytes_cpu(stubs):
    # Three ~2,000-token contexts of 16-token pages at once (the batched decode write, each row's
    # own selection). Dense SVDq at 1.25 bits reads every page, its scales and the basis columns
    # (kv_modes.h DecodeKeyBytesRead): 5.0x fewer key bytes than bf16 at these lengths (measured
    # 2026-12-04); sparse reads 16 pages, the basis and every scored page's landmark: 10.4x.
    ratio, info, tokens = small_budget_reads_fewer_key_bytes(stubs, "cpu", (1900, 1990, 2050), 16)
    assert ratio["0"] > 4.5, ratio
    assert ratio["256"] > 1.6 * ratio["0"], ratio
    assert info["256"].attention_key_compression > 2 * info["0"].attention_key_compression
    # The pages left out change what the model sees: some token differs from dense (random weights
    # spread attention over the whole context).
    assert tokens["256"] != tokens["0"]
    # Rank-16 landmarks: 18 bytes a page and KV head instead of 66, plus the sequence's 4 KB basis
    # per KV head and layer, read once a step. At ~2,000 tokens (~125 pages) that saves little
    # (6 KB of landmarks against 4 KB of basis); at the model's full context (8,192 tokens, 512
    # pages) GetServerInfo's compression rises by about half.
    assert ratio["256r16"] > ratio["256"], ratio
    assert info["256r16"].attention_key_compression > 1.3 * info["256"].attention_key_compression
    # Four rank-2 landmarks: 10 bytes a page, and a 512-byte basis instead of 4 KB.
    assert ratio["256s4r2"] > ratio["256r16"], ratio
    assert info["256s4r2"].attention_key_compression > info["256r16"].attention_key_compression
    # Three dense layers read every page there: between dense and all-sparse, by the counts
    # (1/read is linear in the layers: 3 dense and 27 sparse layers' reads).
    read = {b: 1 / ratio[b] for b in ratio}
    assert abs(read["256s4r2d3"] - (0.1 * read["0"] + 0.9 * read["256s4r2"])) < 1e-3 * read["0"], ratio
    # (Which layers attend densely is asserted in the storage's tests: KvStorageCpu.
    # SparseAttentionAttendsToTheChosenPagesOnly. This model's greedy tokens settle on one id.)


@pytest.mark.gpu
def test_a_small_budget_serves_long_prompts_and_reads_fewer_key_bytes_gpu(stubs):
    ratio, info, _ = small_budget_reads_fewer_key_bytes(stubs, "cuda", [6000 + 97 * i for i in range(6)], 64)
    # ~6,000-token contexts of 16-token pages (kv_modes.h DecodeKeyBytesRead): dense SVDq at 1.25
    # bits reads its 320-byte pages and 10.5 KB of basis per KV head and layer, ~5.5x less than bf16;
    # sparse at 256 tokens, 16 pages, the basis and every page's 66-byte landmark: ~3x less again.
    assert ratio["0"] > 4
    assert ratio["256"] > 2.5 * ratio["0"], ratio
    assert info["256"].attention_key_compression > 2.5 * info["0"].attention_key_compression


# (flags, what the refusal says) on every device; on CUDA the kernels refuse more.
REFUSALS = [
    (SVDQ + ["--sparse-budget", "100"], "leaves no page to choose"),
    (SVDQ + ["--sparse-budget", "100"], "at least 160"),
    (["--key-mode", "bf16", "--sparse-budget", "2048"], "sparse attention needs page-coded keys"),
    (SVDQ + ["--svdq-scope", "layer", "--sparse-budget", "2048"], "sparse attention needs page-coded keys in head scope"),
    (SVDQ + ["--sparse-landmark-rank", "16"], "--sparse-landmark-rank needs --sparse-budget"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-landmark-rank", "64"], "--sparse-landmark-rank must be 0"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-landmark-rank", "129"], "--sparse-landmark-rank"),
    (SVDQ + ["--sparse-landmark-subs", "4"], "--sparse-landmark-subs needs --sparse-budget"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-landmark-subs", "3"], "--sparse-landmark-subs must divide the block size"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-landmark-subs", "9"], "--sparse-landmark-subs"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-landmark-subs", "8"], "over the selection's 256 coordinates a page"),
    (SVDQ + ["--sparse-dense-layers", "2"], "--sparse-dense-layers needs --sparse-budget"),
    (SVDQ + ["--sparse-landmark-basis-tokens", "4096"], "--sparse-landmark-basis-tokens needs --sparse-budget"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-landmark-basis-tokens", "4096"],
     "--sparse-landmark-basis-tokens needs --sparse-landmark-rank"),
    (SVDQ + ["--sparse-budget", "2048", "--sparse-dense-layers", "30"], "--sparse-dense-layers must be in [0, 29]"),
]
CUDA_REFUSALS = [
    (SVDQ + ["--value-mode", "int4", "--sparse-budget", "2048"], "--sparse-budget needs bf16 values"),
    (SVDQ + ["--block-size", "48", "--sparse-budget", "2048"],
     "--sparse-budget needs a block size of 16 tokens times a power of two"),
]


def check_refusals(device, cases):
    for flags, says in cases:
        out = refused(MODEL, device, flags)
        assert says in out, (flags, out[-2000:])


def test_bad_sparse_budgets_and_modes_are_refused_cpu():
    check_refusals("cpu", REFUSALS)


@pytest.mark.gpu
def test_bad_sparse_budgets_and_modes_are_refused_gpu():
    check_refusals("cuda", REFUSALS + CUDA_REFUSALS)
