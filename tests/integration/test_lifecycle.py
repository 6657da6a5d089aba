"""Request and server lifecycle through a real client: Abort by request id, duplicate ids,
graceful shutdown on SIGTERM (in-flight requests finish within the grace period, later ones
are cancelled when it ends, exit code 0)."""
import signal
import threading
import time

import grpc
import pytest

from conftest import Server


def stream_in_thread(stubs, addr, **req):
    """Starts Generate in a thread; returns (first_chunk_event, result dict, thread)."""
    pb, pb_grpc = stubs
    first = threading.Event()
    result = {"ids": [], "final": None, "error": None}

    def run():
        try:
            with grpc.insecure_channel(addr) as ch:
                for resp in pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(**req), timeout=120):
                    if resp.HasField("chunk"):
                        result["ids"] += list(resp.chunk.token_ids)
                        first.set()
                    else:
                        result["final"] = resp.final
        except grpc.RpcError as e:
            result["error"] = e.code()
        finally:
            first.set()
    t = threading.Thread(target=run)
    t.start()
    return first, result, t


def test_abort_by_request_id(cpu_server, stubs):
    pb, pb_grpc = stubs
    first, result, t = stream_in_thread(stubs, cpu_server.addr, text="Count:", max_tokens=4000, ignore_eos=True,
                                        request_id="job-1")
    assert first.wait(60)
    with grpc.insecure_channel(cpu_server.addr) as ch:
        stub = pb_grpc.GenerationStub(ch)
        with pytest.raises(grpc.RpcError) as e:  # the id is taken while job-1 runs
            list(stub.Generate(pb.GenerateRequest(text="x", max_tokens=1, request_id="job-1"), timeout=30))
        assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
        stub.Abort(pb.AbortRequest(request_id="job-1"), timeout=10)
        t.join(30)
        assert not t.is_alive()
        assert result["final"].finish_reason == pb.FINISH_REASON_CANCELLED
        assert len(result["ids"]) < 4000
        with pytest.raises(grpc.RpcError) as e:
            stub.Abort(pb.AbortRequest(request_id="job-1"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_lets_in_flight_requests_finish(model_path, stubs):
    pb, _ = stubs
    s = Server(model_path, "cpu", extra=["--shutdown-grace-seconds", "60"])
    s.wait_ready()
    first, result, t = stream_in_thread(stubs, s.addr, text="Once upon a time", max_tokens=40, ignore_eos=True)
    assert first.wait(60)
    s.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert result["error"] is None and result["final"].finish_reason == pb.FINISH_REASON_LENGTH
    assert len(result["ids"]) == 40
    assert s.proc.wait(timeout=60) == 0


def test_sigterm_grace_period_ends_long_requests(model_path, stubs):
    s = Server(model_path, "cpu", extra=["--shutdown-grace-seconds", "1"])
    s.wait_ready()
    first, result, t = stream_in_thread(stubs, s.addr, text="Once upon a time", max_tokens=4000, ignore_eos=True)
    assert first.wait(60)
    start = time.time()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=30) == 0
    t.join(30)
    assert time.time() - start < 20
    assert len(result["ids"]) < 4000
    assert result["error"] is not None or result["final"].finish_reason == 3  # CANCELLED either way


def test_reflection_lists_the_services(cpu_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    with grpc.insecure_channel(cpu_server.addr) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {"svdq.v1.Generation", "grpc.health.v1.Health"} <= services


def test_health_liveness_and_readiness(cpu_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(cpu_server.addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "svdq.v1.Generation"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_deadline_ends_the_request_and_frees_its_blocks(cpu_server, stubs):
    import urllib.request
    pb, pb_grpc = stubs
    with grpc.insecure_channel(cpu_server.addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.GenerationStub(ch).Generate(
                pb.GenerateRequest(text="Count:", max_tokens=4000, ignore_eos=True), timeout=1.0))
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.time() + 10
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{cpu_server.metrics_port}/metrics", timeout=10) as r:
            body = r.read().decode()
        if "svdq_kv_cache_blocks_used 0" in body and "svdq_num_requests_running 0" in body:
            return
        time.sleep(0.2)
    pytest.fail("the request outlived its deadline in the engine")


def test_oversized_messages_are_refused(cpu_server, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(cpu_server.addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(text="a" * (5 << 20), max_tokens=1), timeout=30))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_queue_full_is_resource_exhausted(model_path, stubs):
    pb, pb_grpc = stubs
    s = Server(model_path, "cpu", extra=["--max-running", "1", "--max-waiting", "1"])
    try:
        s.wait_ready()
        first_a, _, ta = stream_in_thread(stubs, s.addr, text="A", max_tokens=4000, ignore_eos=True, request_id="a")
        assert first_a.wait(60)  # a runs
        _, _, tb = stream_in_thread(stubs, s.addr, text="B", max_tokens=4000, ignore_eos=True, request_id="b")
        time.sleep(0.5)  # b waits in the queue
        with grpc.insecure_channel(s.addr) as ch:
            stub = pb_grpc.GenerationStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                list(stub.Generate(pb.GenerateRequest(text="C", max_tokens=1), timeout=30))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in e.value.details()
            for rid in ("b", "a"):
                stub.Abort(pb.AbortRequest(request_id=rid), timeout=10)
        ta.join(30)
        tb.join(30)
    finally:
        s.stop()


def test_cli_health(cpu_server):
    import subprocess
    from conftest import BUILD
    out = subprocess.run([str(BUILD / "clients" / "svdq-cli"), "--addr", cpu_server.addr, "health"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.count("SERVING") == 2


def test_readiness_is_not_serving_while_the_model_loads(model_path, stubs):
    """Liveness answers SERVING from the start; readiness answers NOT_SERVING until the model
    and the KV cache are loaded (a 3 GiB cache makes loading take long enough to see), and
    Generate answers UNAVAILABLE meanwhile."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    pb, pb_grpc = stubs
    s = Server(model_path, "cpu", extra=["--kv-cache-bytes", "3G"])
    seen, live, refused = [], set(), None
    try:
        deadline = time.time() + 120
        with grpc.insecure_channel(s.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.time() < deadline:
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service="svdq.v1.Generation"), timeout=0.5)
                except grpc.RpcError:
                    time.sleep(0.01)  # not listening yet
                    continue
                if not seen or seen[-1] != r.status:
                    seen.append(r.status)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                live.add(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5).status)
                if refused is None:
                    try:
                        next(iter(pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(text="hi", max_tokens=1),
                                                                       timeout=5)))
                    except grpc.RpcError as e:
                        refused = e.code()
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING], seen
        assert live == {health_pb2.HealthCheckResponse.SERVING}
        assert refused == grpc.StatusCode.UNAVAILABLE
    finally:
        assert s.stop() == 0


def test_request_ids_are_bounded_and_never_echoed_long(cpu_server, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(cpu_server.addr) as ch:
        stub = pb_grpc.GenerationStub(ch)
        with pytest.raises(grpc.RpcError) as e:  # the probe's 1 MB id: not RESOURCE_EXHAUSTED
            stub.Abort(pb.AbortRequest(request_id="a" * 1_000_000), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request_id" in e.value.details() and len(e.value.details()) < 200
        with pytest.raises(grpc.RpcError) as e:
            stub.Abort(pb.AbortRequest(request_id="caf\u00e9"), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # 128 printable characters are fine: not in flight.
        with pytest.raises(grpc.RpcError) as e:
            stub.Abort(pb.AbortRequest(request_id="~" * 128), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        final = list(stub.Generate(pb.GenerateRequest(text="Hi", max_tokens=1, request_id="k" * 128), timeout=60))[-1]
        assert final.final.finish_reason == pb.FINISH_REASON_LENGTH


@pytest.fixture(scope="module")
def small_cache_server(model_path):
    s = Server(model_path, "cpu", extra=["--kv-cache-bytes", "3M"])
    s.wait_ready()
    yield s
    s.stop()


def test_unset_max_tokens_ends_with_length_when_the_cache_is_full(small_cache_server, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(small_cache_server.addr) as ch:
        stub = pb_grpc.GenerationStub(ch)
        capacity = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=10).kv_capacity_tokens
        assert 16 < capacity < 1000
        ids, final = [], None
        for resp in stub.Generate(pb.GenerateRequest(text="Hi", ignore_eos=True), timeout=120):
            if resp.HasField("chunk"):
                ids += list(resp.chunk.token_ids)
            else:
                final = resp.final
        assert final.finish_reason == pb.FINISH_REASON_LENGTH and final.error == ""
        assert final.usage.completion_tokens == len(ids)
        # It went as far as the cache holds: the prompt and every token but the last are stored.
        assert capacity - 16 < final.usage.prompt_tokens + final.usage.completion_tokens <= capacity + 1
        # min_tokens that the cache cannot hold is refused up front, with max_tokens unset.
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(pb.GenerateRequest(text="Hi", min_tokens=capacity), timeout=30))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "min_tokens" in e.value.details()


def test_readiness_is_not_serving_while_in_flight_requests_drain(model_path, stubs):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    pb, pb_grpc = stubs
    s = Server(model_path, "cpu", extra=["--shutdown-grace-seconds", "60"])
    s.wait_ready()
    first, result, t = stream_in_thread(stubs, s.addr, text="Once upon a time", max_tokens=150, ignore_eos=True)
    assert first.wait(60)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with grpc.insecure_channel(s.addr) as ch:
        # The listener is still open: readiness says NOT_SERVING, liveness SERVING...
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="svdq.v1.Generation"), timeout=5).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        # ...and a new Generate is turned away while the old one runs on.
        with pytest.raises(grpc.RpcError) as e:
            list(pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(text="x", max_tokens=1), timeout=10))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.value.details()
    assert t.is_alive()
    t.join(120)
    assert result["error"] is None and result["final"].finish_reason == pb.FINISH_REASON_LENGTH
    assert len(result["ids"]) == 150
    assert s.proc.wait(timeout=60) == 0
