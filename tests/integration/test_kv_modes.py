"""Every key mode and value mode end to end through the real server: the server reports the
mode and its bytes per token (checked against the page layouts written out here), serves
concurrent requests, reports the request's stored bytes in its usage and the key compression
in its metrics, and gives every block back. The first token after a prompt comes from a
prefill that attends over the prompt's own keys as computed, so it equals the bf16 run's in
every mode. The same on CUDA (marked gpu), where page-coded keys with bf16 values decode
through the SVDq attention kernel."""
import math
import subprocess
import threading

import grpc
import pytest

from conftest import BUILD, Server
from test_engine_scheduling import scrape, wait_blocks_free
from test_server_e2e import generate

L, KV, D, P = 30, 3, 64, 16
PROMPTS = ["The history of the Roman Empire begins with", "def quicksort(items):", "My favourite fruit is"]
N = 10


def page_bytes(bits, width=D):
    """SVDq page of one unit (a KV head, or a layer's KV heads in layer scope;
    kernels/svdq/svdq_params.h): codes per group padded to 4 bytes, fp16 scale and zero per
    retained channel, the record padded to 16 bytes."""
    gs = width // 8
    codes = sum(math.ceil(P * gs * b / 8 / 4) * 4 for b in bits if b)
    retained = gs * sum(1 for b in bits if b)
    return math.ceil((codes + 4 * retained) / 16) * 16


def key_bytes(mode, schedule, full, scope="head"):
    if mode == "svdq" and scope == "layer":
        return L * page_bytes(schedule, KV * D) / P
    if mode == "full":
        return L * KV * D * full
    if mode == "fp8":
        return L * KV * (D + 2 * D // 32)
    bits = {"int4": [4] * 8, "int2": [2] * 8, "svdq": schedule}[mode]
    return L * KV * page_bytes(bits) / P


def value_bytes(mode, full):
    return L * KV * {"full": D * full, "fp8": D + 4, "int8": D + 4, "int4": D // 2 + 4}[mode]


MODES = [  # key flag, value flag, schedule, prefix caching expected
    ("bf16", "bf16", None, True),
    ("fp8", "bf16", None, True),
    ("int4", "bf16", None, True),
    ("int2", "int4", None, True),
    ("svdq", "bf16", "8,4,2,1,1,0,0,0", False),
    ("svdq", "int8", "4,2,2,1,1,0,0,0", False),
    ("bf16", "fp8", None, True),
    ("bf16", "int8", None, True),
    ("bf16", "int4", None, True),
]


@pytest.fixture(scope="module")
def calibrated_basis(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("basis") / "smollm2.svdq-basis"
    r = subprocess.run([str(BUILD / "tools" / "svdq_calibrate"), str(model_path), "--tokens", "256", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out


def run_mode(model_path, stubs, device, key, value, schedule, prefix, extra=(), reference=None):
    pb, pb_grpc = stubs
    args = ["--key-mode", key, "--value-mode", value, "--kv-cache-bytes", "64M", "--max-running", "4", *extra]
    if schedule:
        args += ["--svdq-schedule", schedule]
    scope = "layer" if "layer" in extra else "head"
    s = Server(model_path, device, extra=args)
    try:
        s.wait_ready()
        with grpc.insecure_channel(s.addr) as ch:
            info = pb_grpc.GenerationStub(ch).GetServerInfo(pb.GetServerInfoRequest())
        full = 4 if info.dtype.lower() in ("float", "float32") else 2
        name = lambda m: ("fp32" if full == 4 else "bf16") if m == "bf16" else m
        kmode = "full" if key == "bf16" else key
        vmode = "full" if value == "bf16" else value
        bits = [int(b) for b in schedule.split(",")] if schedule else None
        if key == "svdq":
            assert info.key_mode.startswith(f"svdq({schedule}; ") and info.svdq_schedule == schedule
            assert info.svdq_scope == scope and (scope == "layer") == ("layer scope" in info.key_mode)
        else:
            assert info.key_mode == name(key)
        assert info.value_mode == name(value)
        assert info.key_bytes_per_token == pytest.approx(key_bytes(kmode, bits, full, scope))
        assert info.value_bytes_per_token == pytest.approx(value_bytes(vmode, full))
        assert info.key_compression_ratio == pytest.approx(L * KV * D * 2 / key_bytes(kmode, bits, full, scope))
        assert info.prefix_caching == prefix
        W = KV * D if scope == "layer" else D
        # The basis (fp32 mean and vectors) and the fp16 copy of its retained columns (all of them
        # for the direct codecs' identity) that the attention reads.
        retained = W if not bits else sum(W // 8 for b in bits if b > 0)
        basis_bytes = L * (KV * D // W) * ((W * W + W) * 4 + W * retained * 2)
        per_block = (info.key_bytes_per_token + info.value_bytes_per_token) * P
        assert info.kv_blocks_total == int((64 * 2 ** 20 - 4 * info.kv_bytes_per_running_sequence
                                            - (basis_bytes if key in ("int4", "int2", "svdq") else 0))
                                           // per_block)

        results = [None] * len(PROMPTS)

        def work(i):
            results[i] = generate(stubs, s.addr, text=PROMPTS[i], max_tokens=N, ignore_eos=True)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            m = scrape(s)
            if m["svdq_kv_cache_blocks_used"] > 0:
                peak = m["svdq_key_compression_ratio"]
            for t in threads:
                t.join(timeout=0.05)
        for i, (ids, text, final) in enumerate(results):
            assert len(ids) == N and final.finish_reason == pb.FINISH_REASON_LENGTH, f"{key}/{value}: {final}"
            blocks = math.ceil((final.usage.prompt_tokens + N - 1) / P)
            assert final.usage.kv_bytes_stored == pytest.approx(blocks * per_block, rel=1e-6)
            assert final.usage.kv_bytes_full_precision == blocks * P * L * KV * D * 2 * 2
            if reference is not None:
                assert ids[0] == reference[i][0], f"{key}/{value}: first token {ids[0]} != bf16 {reference[i][0]}"
        if peak:
            assert peak == pytest.approx(info.key_compression_ratio, rel=1e-6)
        wait_blocks_free(s)
        return [r[0] for r in results]
    finally:
        assert s.stop() == 0, s.output()


def check_all_modes(model_path, stubs, device, calibrated_basis):
    reference = run_mode(model_path, stubs, device, *MODES[0])
    for key, value, schedule, prefix in MODES[1:]:
        run_mode(model_path, stubs, device, key, value, schedule, prefix, reference=reference)
    # Layer scope: one basis per layer over the KV heads concatenated (width KV * D).
    run_mode(model_path, stubs, device, "svdq", "int4", "8,4,2,1,1,0,0,0", False, extra=["--svdq-scope", "layer"],
             reference=reference)
    # SVDq with the calibrated basis: pages are the same for every sequence, so they are shared.
    run_mode(model_path, stubs, device, "svdq", "bf16", "8,4,2,1,1,0,0,0", True,
             extra=["--svdq-basis", "calibrated", "--svdq-basis-file", str(calibrated_basis)], reference=reference)


def test_every_mode_end_to_end_cpu(model_path, stubs, calibrated_basis):
    check_all_modes(model_path, stubs, "cpu", calibrated_basis)


@pytest.mark.gpu
def test_every_mode_end_to_end_gpu(model_path, stubs, calibrated_basis):
    check_all_modes(model_path, stubs, "cuda", calibrated_basis)


def test_bad_mode_settings_are_refused(model_path, calibrated_basis, tmp_path):
    for args, fragment in [
        (["--key-mode", "int3"], "invalid value 'int3' for --key-mode"),
        (["--value-mode", "int2"], "invalid value 'int2' for --value-mode"),
        (["--svdq-schedule", "8,4,2"], "invalid value '8,4,2' for --svdq-schedule"),
        (["--key-mode", "svdq", "--svdq-basis", "calibrated", "--svdq-basis-file", str(tmp_path / "none")], "none"),
        (["--key-mode", "svdq", "--kv-cache-bytes", "1M", "--max-running", "64"], "holds no block"),
        (["--svdq-scope", "model"], "invalid value 'model' for --svdq-scope"),
        (["--key-mode", "svdq", "--svdq-scope", "layer", "--svdq-basis", "calibrated", "--svdq-basis-file",
          str(calibrated_basis)], "the server needs layer scope"),
    ]:
        r = subprocess.run([str(BUILD / "server" / "svdq-server"), "--model", str(model_path), "--device", "cpu",
                            "--port", "0", "--metrics-port", "0", "--http-port", "0", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and fragment in r.stderr, (args, r.stderr)
