"""Scoring a prompt through the cache as served (issue 14, item 0): with prompt_logprobs_chunk
N > 0 the prompt is prefilled N tokens at a time and each chunk attends over the stored form
of the earlier chunks, so prompt log-probabilities show what a KV mode costs; with 0 they are
exact and every mode gives the same numbers. On the CPU (fp32 pages), the full-precision mode
stores keys exactly, so its chunked scores equal its exact ones up to summation order; int2
keys change them; a chunk as long as the prompt is the exact computation again."""
import grpc
import pytest

from conftest import Server

TEXT = ("The history of the Roman Empire begins with the founding of the city of Rome, "
        "and the story of its emperors fills many volumes of careful scholarship.")


def prompt_logprobs(stubs, addr, chunk, text=TEXT, first_chunk=0):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(addr) as ch:
        for resp in pb_grpc.GenerationStub(ch).Generate(
                pb.GenerateRequest(text=text, max_tokens=1, prompt_logprobs=True, prompt_logprobs_chunk=chunk,
                                   prompt_logprobs_first_chunk=first_chunk),
                timeout=300):
            if resp.HasField("chunk") and len(resp.chunk.prompt_logprobs):
                return list(resp.chunk.prompt_logprobs)
    raise AssertionError("no prompt logprobs came back")


def scores(model_path, stubs, key, value, chunks, extra=(), text=TEXT):
    """Each chunk's scores; a chunk given as (N, F) has a first chunk of F."""
    s = Server(model_path, "cpu", extra=["--key-mode", key, "--value-mode", value, "--kv-cache-bytes", "64M",
                                        "--max-running", "2", *extra])
    try:
        s.wait_ready()
        return {c: prompt_logprobs(stubs, s.addr, c[0] if isinstance(c, tuple) else c, text,
                                   c[1] if isinstance(c, tuple) else 0) for c in chunks}
    finally:
        assert s.stop() == 0, s.output()


def max_diff(a, b):
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b))


def test_chunked_scoring_reads_the_cache(model_path, stubs):
    full = scores(model_path, stubs, "bf16", "bf16", [0, 1, 7, 16])
    low = scores(model_path, stubs, "int2", "int4", [0, 7, 16, 10_000])
    n = len(full[0])
    assert n > 20 and all(len(v) == n for v in [*full.values(), *low.values()])
    # Exact scoring ignores the cache: the same numbers in every mode.
    assert max_diff(low[0], full[0]) < 1e-4
    # Full-precision pages: chunked (teacher-forced at N = 1) = exact, up to summation order.
    for c in (1, 7, 16):
        assert max_diff(full[c], full[0]) < 2e-3, c
    # int2 keys / int4 values: the chunks read quantized pages, and the scores move.
    for c in (7, 16):
        assert max_diff(low[c], low[0]) > 1e-2, c
        # ... but only after the first chunk, whose positions see no stored page.
        assert max_diff(low[c][:c - 1], low[0][:c - 1]) < 1e-4, c
    # A chunk longer than the prompt is the exact computation.
    assert low[10_000] == low[0]


def test_a_first_chunk_prefills_then_decode_steps_score_the_rest(model_path, stubs):
    """prompt_logprobs_first_chunk F with chunk 1: the first F tokens are one forward (exact
    scores, no stored page read), every later token a decode step over the stored cache: with
    int2 keys the scores after F move, those before it do not; full-precision pages score as
    exact throughout."""
    F = 12
    full = scores(model_path, stubs, "bf16", "bf16", [0, (1, F)])
    low = scores(model_path, stubs, "int2", "int4", [0, (1, F), (1, 0)])
    n = len(full[0])
    assert n > 20 and all(len(v) == n for v in [*full.values(), *low.values()])
    assert max_diff(full[(1, F)], full[0]) < 2e-3
    assert max_diff(low[(1, F)][:F - 1], low[0][:F - 1]) < 1e-4
    assert max_diff(low[(1, F)][F:], low[0][F:]) > 1e-2
    # Without a first chunk, chunk 1 reads stored pages from the second token on.
    assert max_diff(low[(1, 0)][:F - 1], low[0][:F - 1]) > 1e-2


def test_svdq_prefill_basis_does_not_depend_on_the_chunks(model_path, stubs):
    """The prefill basis is fitted on a sequence's first min(prompt, --svdq-basis-tokens)
    tokens, which its first forward covers whole: chunks of 8 and of 16 then score those
    positions identically, through the same basis, and differ only after them (each chunk
    reads the stored pages of the earlier ones). With a minimum of 1 the first forward is one
    chunk, the basis comes from its 8 or 16 keys, and the two disagree from the start."""
    text = TEXT + " " + TEXT
    svdq = ["--svdq-schedule", "8,4,2,1,1,0,0,0"]
    fixed = scores(model_path, stubs, "svdq", "bf16", [8, 16], extra=[*svdq, "--svdq-basis-tokens", "32"], text=text)
    loose = scores(model_path, stubs, "svdq", "bf16", [8, 16], extra=[*svdq, "--svdq-basis-tokens", "1"], text=text)
    n = len(fixed[8])
    assert n > 48
    assert max_diff(fixed[8][:31], fixed[16][:31]) < 1e-4  # the first 32 tokens: one forward each time
    assert max_diff(fixed[8], fixed[16]) > 1e-3             # later chunks read stored pages
    assert max_diff(loose[8][8:31], loose[16][8:31]) > 1e-3  # bases from 8 and from 16 keys


@pytest.mark.parametrize("req, fragment", [
    (dict(prompt_logprobs=True, prompt_logprobs_chunk=-1), "prompt_logprobs_chunk"),
    (dict(prompt_logprobs=False, prompt_logprobs_chunk=8), "prompt_logprobs_chunk"),
    (dict(prompt_logprobs=True, prompt_logprobs_chunk=1, prompt_logprobs_first_chunk=-1), "prompt_logprobs_first_chunk"),
    (dict(prompt_logprobs=True, prompt_logprobs_first_chunk=64), "prompt_logprobs_first_chunk"),
])
def test_chunk_is_validated(cpu_server, stubs, req, fragment):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(cpu_server.addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(text="hi", max_tokens=1, **req), timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in e.value.details()
