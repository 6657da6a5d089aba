"""A bad-input matrix through a real gRPC client: every case gets the right status code and a
message that names the problem, and the server answers a normal request afterwards."""
import grpc
import pytest

from test_server_e2e import generate

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NAN, INF = float("nan"), float("inf")

GENERATE_CASES = [
    (dict(text="hi", sampling=dict(temperature=NAN)), INVALID, "temperature"),
    (dict(text="hi", sampling=dict(temperature=INF)), INVALID, "temperature"),
    (dict(text="hi", sampling=dict(temperature=-0.5)), INVALID, "temperature"),
    (dict(text="hi", sampling=dict(top_p=NAN)), INVALID, "top_p"),
    (dict(text="hi", sampling=dict(top_p=-0.1)), INVALID, "top_p"),
    (dict(text="hi", sampling=dict(min_p=-0.1)), INVALID, "min_p"),
    (dict(text="hi", sampling=dict(min_p=NAN)), INVALID, "min_p"),
    (dict(text="hi", sampling=dict(repetition_penalty=3)), INVALID, "repetition_penalty"),
    (dict(text="hi", sampling=dict(repetition_penalty=NAN)), INVALID, "repetition_penalty"),
    (dict(text="hi", sampling=dict(presence_penalty=INF)), INVALID, "presence_penalty"),
    (dict(text="hi", sampling=dict(frequency_penalty=-3)), INVALID, "frequency_penalty"),
    (dict(text="hi", sampling=dict(top_k=-1)), INVALID, "top_k"),
    (dict(text="hi", max_tokens=-5), INVALID, "max_tokens"),
    (dict(text="hi", max_tokens=2**31 - 1), INVALID, "context"),
    (dict(text="hi", min_tokens=-1), INVALID, "min_tokens"),
    (dict(text="hi", min_tokens=5, max_tokens=2), INVALID, "min_tokens"),
    (dict(token_ids=dict(ids=[2**31 - 1])), INVALID, "outside the vocabulary"),
    (dict(token_ids=dict(ids=[-2**31])), INVALID, "outside the vocabulary"),
    (dict(token_ids=dict(ids=[])), INVALID, "token_ids is empty"),
    (dict(text="hi", stop=["x"] * 17), INVALID, "stop strings"),
    (dict(text="hi", stop=[""]), INVALID, "stop string"),
    (dict(text="hi", stop=["y" * 300]), INVALID, "stop string"),
    (dict(text="hi", stop_token_ids=[-1]), INVALID, "stop token id"),
    (dict(text="hi", stop_token_ids=[10**9]), INVALID, "stop token id"),
    (dict(text="hi", logprobs=21), INVALID, "logprobs"),
    (dict(text="hi", logprobs=-1), INVALID, "logprobs"),
    (dict(chat=dict(messages=[dict(role="wizard", content="hi")])), INVALID, "unknown role"),
    (dict(chat=dict(messages=[])), INVALID, "no messages"),
    (dict(text="hi", request_id="r" * 1_000_000), INVALID, "request_id"),
    (dict(text="hi", request_id="tab\there"), INVALID, "request_id"),
    (dict(text="word " * 9000), INVALID, "context"),
    (dict(text="x" * (5 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]


@pytest.mark.parametrize("req, code, fragment", GENERATE_CASES)
def test_generate_bad_inputs(cpu_server, stubs, req, code, fragment):
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, cpu_server.addr, **req)
    assert e.value.code() == code, e.value.details()
    assert fragment in e.value.details()
    assert e.value.details() and len(e.value.details()) < 400  # a message, never an echo of the input
    # Still serving: a normal request right after.
    assert len(generate(stubs, cpu_server.addr, text="Hi", max_tokens=2, ignore_eos=True)[0]) == 2


def test_other_rpcs_bad_inputs(cpu_server, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(cpu_server.addr) as ch:
        stub = pb_grpc.GenerationStub(ch)
        for call, req, code, fragment in [
            (stub.Detokenize, pb.DetokenizeRequest(ids=[-7]), INVALID, "outside the vocabulary"),
            (stub.Detokenize, pb.DetokenizeRequest(ids=[2**31 - 1]), INVALID, "outside the vocabulary"),
            (stub.Tokenize, pb.TokenizeRequest(chat=dict(messages=[dict(role="robot", content="x")])), INVALID,
             "unknown role"),
            (stub.Abort, pb.AbortRequest(request_id=""), INVALID, "request_id"),
        ]:
            with pytest.raises(grpc.RpcError) as e:
                call(req, timeout=10)
            assert e.value.code() == code and fragment in e.value.details(), (req, e.value.details())


def test_a_1ms_deadline_ends_the_call_and_the_server_serves_on(cpu_server, stubs):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(cpu_server.addr) as ch:
        stub = pb_grpc.GenerationStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(pb.GenerateRequest(text="Count:", max_tokens=200, ignore_eos=True), timeout=0.001))
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(generate(stubs, cpu_server.addr, text="Hi", max_tokens=2, ignore_eos=True)[0]) == 2
