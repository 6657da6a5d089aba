"""The OpenAI-compatible HTTP front, driven by the clients people use: the `openai` SDK
(completions and chat, streaming or not) and lm-evaluation-harness' `local-completions`
model (loglikelihood through echo + logprobs, on a local multiple-choice task), checked
against the gRPC front of the same server (greedy text, stop strings, logprobs, usage,
sampling fields). Plus the SSE framing byte for byte, client disconnects freeing their
sequence, TLS on both fronts (mutual on gRPC), API keys on both fronts (owner-scoped Abort,
never logged), OpenAI error objects for bad requests (400, 404, 413), svdq_api_requests_total,
429 on a full queue and 503 while draining.

Servers: a plain one and one with TLS and API keys (module-scoped, each loads the model
once); the mutual-TLS and the queue/draining tests start their own."""
import http.client
import json
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import MODEL, Server

TIMEOUT = 120
TOL = 1e-4


# ----------------------------------------------------------------------------- helpers

class Resp:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"HTTP {self.status} {self.body[:600]!r}"


def call(base, method, path, body=None, headers=None, ctx=None, timeout=TIMEOUT):
    """One request on a fresh connection (http or https per `base`)."""
    u = urllib.parse.urlsplit(base)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def assert_error(resp, status):
    """An OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert "param" in err and "code" in err, err
    return err


def scrape(server):
    """Metrics as {series: value}; series keep their labels."""
    r = call(f"http://127.0.0.1:{server.metrics_port}", "GET", "/metrics", timeout=10)
    assert r.status == 200
    return {l.rsplit(" ", 1)[0]: float(l.rsplit(" ", 1)[1]) for l in r.body.decode().splitlines()
            if l and not l.startswith("#")}


def wait_settled(server, timeout=15):
    """Waits until no request runs and no KV block is held; returns the last scrape."""
    deadline = time.time() + timeout
    while True:
        m = scrape(server)
        if m["svdq_num_requests_running"] == 0 and m["svdq_kv_cache_blocks_used"] == 0:
            return m
        if time.time() > deadline:
            pytest.fail(f"still running {m['svdq_num_requests_running']}, "
                        f"blocks used {m['svdq_kv_cache_blocks_used']} after {timeout} s")
        time.sleep(0.1)


def wait_http_ready(server, base, ctx=None, timeout=120):
    """Polls GET /ready until 200 (503 and refused connections are expected meanwhile)."""
    deadline = time.time() + timeout
    seen = set()
    while time.time() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"svdq-server exited early: {server.output()}")
        try:
            r = call(base, "GET", "/ready", ctx=ctx, timeout=2)
            seen.add(r.status)
            if r.status == 200:
                assert seen <= {200, 503}, f"/ready answered {seen} while loading"
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"HTTP front of svdq-server not ready (saw {seen}): {server.output()}")


def grpc_generate(stubs, channel, metadata=None, **req):
    pb, pb_grpc = stubs
    out = {"ids": [], "text": "", "logprobs": [], "prompt_logprobs": [], "final": None}
    for resp in pb_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(**req), timeout=TIMEOUT,
                                                         metadata=metadata):
        if resp.HasField("chunk"):
            c = resp.chunk
            out["ids"] += list(c.token_ids)
            out["text"] += c.text
            out["logprobs"] += list(c.logprobs)
            out["prompt_logprobs"] += list(c.prompt_logprobs)
        else:
            out["final"] = resp.final
    return out


def finish_name(pb, final):
    return {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length"}[final.finish_reason]


def chat_pb(pb, messages):
    return pb.ChatMessages(messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages])


def close(a, b, tol=TOL):
    return abs(a - b) <= tol


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def server(model_path):
    # A small request limit so that the 413 test needs only a small body.
    s = Server(model_path, "cpu", extra=["--max-message-bytes", "64K"])
    try:
        s.wait_ready()
        wait_http_ready(s, s.http_url)
    except BaseException:
        s.stop()
        raise
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.addr) as ch:
        yield ch


@pytest.fixture(scope="module")
def model_name(server):
    """The id the HTTP front serves (GET /v1/models)."""
    return call(server.http_url, "GET", "/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(server):
    import openai
    c = openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    yield c
    c.close()


@pytest.fixture(scope="module")
def hf_tokenizer_dir(model_path, tmp_path_factory):
    """A Hugging Face tokenizer directory made from the GGUF (no hub access needed):
    lm_eval's local-completions needs one to count context tokens."""
    from transformers import AutoTokenizer
    d = tmp_path_factory.mktemp("hf_tokenizer")
    AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name).save_pretrained(str(d))
    return d


# ----------------------------------------------------------------------------- basics

def test_health_ready_and_models(server, client, model_name, stubs, channel):
    r = call(server.http_url, "GET", "/health")
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert call(server.http_url, "GET", "/ready").status == 200
    r = call(server.http_url, "GET", "/v1/models")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    m = body["data"][0]
    assert m["object"] == "model" and m["owned_by"] == "svdq-serve"
    assert [x.id for x in client.models.list().data] == [model_name]
    # Without --served-model-name the id is the model file's name without .gguf.
    assert m["id"] == MODEL.stem


# ----------------------------------------------------------------------------- completions

COMPLETION_PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


def check_completion_logprobs(lp, grpc_lps, k):
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(grpc_lps)
    for got, top, want in zip(lp.token_logprobs, lp.top_logprobs, grpc_lps):
        assert close(got, want.logprob), (got, want.logprob)
        assert 1 <= len(top) <= k + 1
        assert close(max(top.values()), want.top[0].logprob)
        # greedy: the chosen token is the most likely one
        assert close(max(top.values()), got)
    assert lp.text_offset == sorted(lp.text_offset)


def test_completions_greedy_match_grpc(client, stubs, channel, model_name):
    pb, _ = stubs
    for prompt in COMPLETION_PROMPTS:
        r = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0, logprobs=3)
        g = grpc_generate(stubs, channel, text=prompt, max_tokens=12, logprobs=3, sampling=dict(temperature=0))
        assert r.object == "text_completion" and r.model == model_name and r.id
        assert abs(r.created - time.time()) < 600
        assert len(r.choices) == 1
        c = r.choices[0]
        assert c.index == 0
        assert c.text == g["text"], (prompt, c.text, g["text"])
        assert c.finish_reason == finish_name(pb, g["final"])
        assert r.usage.prompt_tokens == g["final"].usage.prompt_tokens
        assert r.usage.completion_tokens == g["final"].usage.completion_tokens == len(g["ids"])
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        check_completion_logprobs(c.logprobs, g["logprobs"], 3)
        if c.finish_reason == "length" and c.text.isascii():
            assert "".join(c.logprobs.tokens) == c.text


def test_completions_stop_strings_match_grpc(client, stubs, channel, model_name):
    pb, _ = stubs
    prompt = "Once upon a time, in a small village,"
    full = grpc_generate(stubs, channel, text=prompt, max_tokens=16, ignore_eos=True)["text"]
    words = [w for w in full.split() if len(w) >= 3]
    stop = words[len(words) // 2]
    assert full.find(stop) > 0
    g = grpc_generate(stubs, channel, text=prompt, max_tokens=16, stop=[stop, "zzzz"])
    assert g["text"] == full[:full.find(stop)] and g["final"].finish_reason == pb.FINISH_REASON_STOP
    for s in (stop, [stop, "zzzz"]):
        r = client.completions.create(model=model_name, prompt=prompt, max_tokens=16, temperature=0, stop=s)
        assert r.choices[0].text == g["text"]
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == g["final"].usage.completion_tokens
    # Streaming with the stop string: the same text, the stop string never sent.
    pieces, finish = [], None
    for ch in client.completions.create(model=model_name, prompt=prompt, max_tokens=16, temperature=0, stop=stop,
                                        stream=True):
        for c in ch.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(pieces) == g["text"] and finish == "stop"


def test_completions_echo_logprobs_match_prompt_logprobs(client, stubs, channel, model_name):
    pb, pb_grpc = stubs
    prompt = "The capital of France is"
    ids = pb_grpc.GenerationStub(channel).Tokenize(pb.TokenizeRequest(text=prompt), timeout=30).ids
    g = grpc_generate(stubs, channel, text=prompt, max_tokens=3, logprobs=1, prompt_logprobs=True)
    assert len(g["prompt_logprobs"]) == len(ids) - 1
    r = client.completions.create(model=model_name, prompt=prompt, max_tokens=3, temperature=0, logprobs=1, echo=True)
    c = r.choices[0]
    assert c.text == prompt + g["text"]
    lp = c.logprobs
    n = len(ids) + len(g["ids"])
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(g["ids"])
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for got, want in zip(lp.token_logprobs[1:len(ids)], g["prompt_logprobs"]):
        assert close(got, want), (got, want)
    for got, want in zip(lp.token_logprobs[len(ids):], g["logprobs"]):
        assert close(got, want.logprob)
    for top in lp.top_logprobs[1:]:
        assert 1 <= len(top) <= 2
    assert "".join(lp.tokens[:len(ids)]) == prompt
    assert lp.text_offset[0] == 0 and lp.text_offset[len(ids)] == len(prompt)
    assert lp.text_offset == sorted(lp.text_offset)


def test_completions_echo_with_max_tokens_zero_scores_the_prompt(server, stubs, channel, model_name):
    # max_tokens 0 with echo and logprobs: the prompt's scores only, nothing generated (as
    # older evaluation harnesses ask).
    prompt = "The capital of France is"
    g = grpc_generate(stubs, channel, text=prompt, max_tokens=1, prompt_logprobs=True)
    r = call(server.http_url, "POST", "/v1/completions", {"model": model_name, "prompt": prompt, "max_tokens": 0,
                                                          "echo": True, "logprobs": 1, "temperature": 0})
    assert r.status == 200, r
    body = r.json()
    c = body["choices"][0]
    assert c["text"] == prompt
    assert body["usage"]["completion_tokens"] == 0
    assert body["usage"]["prompt_tokens"] == g["final"].usage.prompt_tokens
    lp = c["logprobs"]["token_logprobs"]
    assert len(lp) == g["final"].usage.prompt_tokens and lp[0] is None
    assert all(close(a, b) for a, b in zip(lp[1:], g["prompt_logprobs"]))


def test_text_offsets_count_characters(server, model_name):
    # OpenAI's (and vLLM's) text_offset indexes the returned text by characters, not bytes.
    prompt = "Café au lait — très bon"
    r = call(server.http_url, "POST", "/v1/completions", {"model": model_name, "prompt": prompt, "max_tokens": 3,
                                                          "echo": True, "logprobs": 0, "temperature": 0})
    assert r.status == 200, r
    c = r.json()["choices"][0]
    text, lp = c["text"], c["logprobs"]
    assert text.startswith(prompt)
    checked = 0
    for tok, off in zip(lp["tokens"], lp["text_offset"]):
        if "\ufffd" in tok:  # a token that is part of a character
            continue
        assert text[off:off + len(tok)] == tok, (tok, off, lp["tokens"], lp["text_offset"])
        checked += 1
    assert checked >= 5


def test_completions_token_ids_and_several_prompts(client, stubs, channel, model_name):
    pb, pb_grpc = stubs
    stub = pb_grpc.GenerationStub(channel)
    prompts = COMPLETION_PROMPTS[:2]
    ids = [list(stub.Tokenize(pb.TokenizeRequest(text=p), timeout=30).ids) for p in prompts]
    want = [grpc_generate(stubs, channel, text=p, max_tokens=6)["text"] for p in prompts]
    # A list of strings, a list of token ids, a list of lists of token ids.
    r = client.completions.create(model=model_name, prompt=prompts, max_tokens=6, temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == want
    assert r.usage.prompt_tokens == sum(map(len, ids))
    r = client.completions.create(model=model_name, prompt=ids[0], max_tokens=6, temperature=0)
    assert [c.text for c in r.choices] == want[:1] and r.usage.prompt_tokens == len(ids[0])
    r = client.completions.create(model=model_name, prompt=ids, max_tokens=6, temperature=0)
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == want
    # echo of token ids: the prompt's text comes first
    r = client.completions.create(model=model_name, prompt=[ids[1]], max_tokens=6, temperature=0, echo=True)
    assert r.choices[0].text == prompts[1] + want[1]


def test_completions_defaults_and_null_fields(server, model_name):
    # max_tokens defaults to 16, as in OpenAI's API; optional fields may be null; unknown
    # fields (user) are ignored.
    r = call(server.http_url, "POST", "/v1/completions", {"model": model_name, "prompt": "1, 2, 3, 4, 5, 6,",
                                                          "temperature": 0})
    assert r.status == 200, r
    body = r.json()
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["logprobs"] is None
    r = call(server.http_url, "POST", "/v1/completions",
             {"model": model_name, "prompt": "Hello", "max_tokens": 2, "temperature": None, "top_p": None,
              "stop": None, "logprobs": None, "seed": None, "stream": False, "n": 1, "echo": False,
              "presence_penalty": None, "frequency_penalty": None, "user": "someone", "stream_options": None})
    assert r.status == 200, r
    assert r.json()["usage"]["completion_tokens"] <= 2
    # lm_eval's local-completions without model= sends "model": null.
    r = call(server.http_url, "POST", "/v1/completions", {"model": None, "prompt": "Hello", "max_tokens": 1})
    assert r.status == 200 and r.json()["model"] == model_name, r


def test_completions_max_tokens_zero_does_not_run_to_the_context_limit(server, model_name):
    # gRPC's max_tokens 0 means "up to the context limit"; OpenAI's 0 does not. Either
    # refused, or no generated token: not 8,000 tokens.
    r = call(server.http_url, "POST", "/v1/completions",
             {"model": model_name, "prompt": "1, 2, 3,", "max_tokens": 0, "temperature": 0}, timeout=60)
    if r.status != 200:
        assert_error(r, 400)
    else:
        assert r.json()["usage"]["completion_tokens"] == 0


def test_sampling_fields_reach_the_engine(client, stubs, channel, model_name):
    """Seeded sampling and penalties give what gRPC gives with the same parameters."""
    prompt = "Tell me a story about a dragon"
    cases = [
        (dict(temperature=0.9, top_p=0.9, seed=1234, extra_body={"top_k": 40}),
         dict(temperature=0.9, top_p=0.9, seed=1234, top_k=40)),
        (dict(temperature=1.0, seed=7, extra_body={"min_p": 0.1}), dict(temperature=1.0, seed=7, min_p=0.1)),
        (dict(temperature=0, presence_penalty=1.5, frequency_penalty=1.0, extra_body={"repetition_penalty": 1.5}),
         dict(temperature=0, presence_penalty=1.5, frequency_penalty=1.0, repetition_penalty=1.5)),
    ]
    for http_args, sampling in cases:
        a = client.completions.create(model=model_name, prompt=prompt, max_tokens=10, **http_args).choices[0].text
        b = client.completions.create(model=model_name, prompt=prompt, max_tokens=10, **http_args).choices[0].text
        g = grpc_generate(stubs, channel, text=prompt, max_tokens=10, sampling=sampling)["text"]
        assert a == b == g, (http_args, a, b, g)
    other = client.completions.create(model=model_name, prompt=prompt, max_tokens=10, temperature=0.9, top_p=0.9,
                                      seed=999, extra_body={"top_k": 40}).choices[0].text
    assert other != grpc_generate(stubs, channel, text=prompt, max_tokens=10, sampling=cases[0][1])["text"]


def test_completions_streaming(client, model_name):
    prompt = COMPLETION_PROMPTS[0]
    full = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert len(chunks) >= 3
    body, last = chunks[:-1], chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == full.usage.prompt_tokens
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert last.usage.total_tokens == full.usage.total_tokens
    assert all(c.usage is None for c in body)
    assert all(c.object == "text_completion" and c.model == model_name for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert all(len(c.choices) == 1 and c.choices[0].index == 0 for c in body)
    assert "".join(c.choices[0].text for c in body) == full.choices[0].text
    finishes = [c.choices[0].finish_reason for c in body]
    assert finishes[-1] == full.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    # Without include_usage: no usage chunk.
    chunks = list(client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True))
    assert all(len(c.choices) == 1 and c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    # Streamed logprobs: the same values as the non-streamed ones.
    lp_full = client.completions.create(model=model_name, prompt=prompt, max_tokens=6, temperature=0, logprobs=2)
    streamed = [x for c in client.completions.create(model=model_name, prompt=prompt, max_tokens=6, temperature=0,
                                                     logprobs=2, stream=True)
                for ch in c.choices if ch.logprobs for x in ch.logprobs.token_logprobs]
    assert len(streamed) == len(lp_full.choices[0].logprobs.token_logprobs)
    assert all(close(a, b) for a, b in zip(streamed, lp_full.choices[0].logprobs.token_logprobs))


def test_completions_streaming_several_prompts_with_echo(server, model_name):
    prompts = ["1, 2, 3,", "The capital of France is"]
    req = {"model": model_name, "prompt": prompts, "max_tokens": 4, "temperature": 0, "echo": True}
    whole = call(server.http_url, "POST", "/v1/completions", req)
    assert whole.status == 200, whole
    want = {c["index"]: c["text"] for c in whole.json()["choices"]}
    assert [want[0][:len(prompts[0])], want[1][:len(prompts[1])]] == prompts
    r = call(server.http_url, "POST", "/v1/completions", dict(req, stream=True, stream_options={"include_usage": True}))
    payloads = check_sse(r, "text_completion")
    got, finish = {0: "", 1: ""}, {}
    for p in payloads[:-1]:
        assert len(p["choices"]) == 1
        c = p["choices"][0]
        got[c["index"]] += c["text"]
        if c["finish_reason"]:
            finish[c["index"]] = c["finish_reason"]
    assert got == want
    assert finish == {0: "length", 1: "length"}
    assert payloads[-1]["usage"] == whole.json()["usage"]


# ----------------------------------------------------------------------------- chat

CHATS = [
    [{"role": "user", "content": "Say hello."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Name three colors."},
     {"role": "assistant", "content": "Red, green, blue."}, {"role": "user", "content": "Two more?"}],
]


def test_chat_matches_grpc(client, stubs, channel, model_name):
    pb, _ = stubs
    finishes = set()
    for messages in CHATS:
        r = client.chat.completions.create(model=model_name, messages=messages, max_tokens=40, temperature=0,
                                           logprobs=True, top_logprobs=2)
        g = grpc_generate(stubs, channel, chat=chat_pb(pb, messages), max_tokens=40, logprobs=2)
        assert r.object == "chat.completion" and r.model == model_name and r.id
        assert len(r.choices) == 1 and r.choices[0].index == 0
        c = r.choices[0]
        assert c.message.role == "assistant"
        assert c.message.content == g["text"]
        assert c.finish_reason == finish_name(pb, g["final"])
        finishes.add(c.finish_reason)
        assert r.usage.prompt_tokens == g["final"].usage.prompt_tokens
        assert r.usage.completion_tokens == g["final"].usage.completion_tokens
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        content = c.logprobs.content
        assert len(content) == len(g["logprobs"])
        for got, want in zip(content, g["logprobs"]):
            assert close(got.logprob, want.logprob)
            assert isinstance(got.token, str)
            assert 1 <= len(got.top_logprobs) <= 3
            assert close(got.top_logprobs[0].logprob, want.top[0].logprob)
            assert got.top_logprobs[0].logprob >= got.top_logprobs[-1].logprob
    assert "stop" in finishes  # "Say hello." ends with the end-of-turn token
    # max_completion_tokens is the newer name of max_tokens.
    a = client.chat.completions.create(model=model_name, messages=CHATS[1], max_tokens=5, temperature=0)
    b = client.chat.completions.create(model=model_name, messages=CHATS[1], max_completion_tokens=5, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens == 5 and b.choices[0].finish_reason == "length"
    # Without logprobs, none are returned.
    assert a.choices[0].logprobs is None


def test_chat_stop_strings_match_grpc(client, stubs, channel, model_name):
    pb, _ = stubs
    messages = CHATS[0]
    full = grpc_generate(stubs, channel, chat=chat_pb(pb, messages), max_tokens=40)["text"]
    words = [w for w in full.split() if len(w) >= 3]
    stop = words[len(words) // 2]
    g = grpc_generate(stubs, channel, chat=chat_pb(pb, messages), max_tokens=40, stop=[stop])
    assert g["final"].finish_reason == pb.FINISH_REASON_STOP
    r = client.chat.completions.create(model=model_name, messages=messages, max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].message.content == g["text"] == full[:full.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_chat_streaming(client, model_name):
    messages = CHATS[0]
    full = client.chat.completions.create(model=model_name, messages=messages, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model=model_name, messages=messages, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    body, last = chunks[:-1], chunks[-1]
    assert all(c.object == "chat.completion.chunk" and c.model == model_name for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first = body[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert all(len(c.choices) == 1 and c.choices[0].index == 0 for c in body)
    assert "".join(c.choices[0].delta.content or "" for c in body) == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in body]
    assert finishes[-1] == full.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (full.usage.prompt_tokens,
                                                                       full.usage.completion_tokens)
    assert all(c.usage is None for c in body)
    # Streamed chat logprobs match the non-streamed ones.
    lp = client.chat.completions.create(model=model_name, messages=messages, max_tokens=5, temperature=0,
                                        logprobs=True, top_logprobs=1).choices[0].logprobs.content
    streamed = [x.logprob for c in client.chat.completions.create(
        model=model_name, messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=1, stream=True)
        for ch in c.choices if ch.logprobs and ch.logprobs.content for x in ch.logprobs.content]
    assert len(streamed) == len(lp) and all(close(a, b.logprob) for a, b in zip(streamed, lp))


# ----------------------------------------------------------------------------- HTTP plumbing

def test_concurrent_requests(server, model_name):
    prompts = COMPLETION_PROMPTS + ["Water boils at", "The quick brown fox", "1, 2, 3,"]

    def one(p):
        r = call(server.http_url, "POST", "/v1/completions",
                 {"model": model_name, "prompt": p, "max_tokens": 6, "temperature": 0})
        assert r.status == 200, r
        return r.json()["choices"][0]["text"]
    sequential = [one(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as ex:
        assert list(ex.map(one, prompts)) == sequential


def test_keep_alive_connection_serves_several_requests(server, model_name):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
    try:
        for body, status in [({"model": model_name, "prompt": "Hi", "max_tokens": 2}, 200),
                             ({"model": model_name, "prompt": "Hi", "max_tokens": "abc"}, 400),
                             ({"model": model_name, "prompt": "Hi", "max_tokens": 2, "stream": True}, 200),
                             ({"model": model_name, "messages": [{"role": "user", "content": "Hi"}],
                               "max_tokens": 2}, 200)]:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == status, (body, r.status, data)
        conn.request("GET", "/v1/models")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["data"][0]["id"] == model_name
    finally:
        conn.close()


def check_sse(resp, obj):
    assert resp.status == 200, resp
    assert resp.headers["content-type"].startswith("text/event-stream"), resp.headers
    raw = resp.body
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert raw.count(b"data: [DONE]") == 1
    payloads = []
    for ev in events[:-2]:
        assert ev.startswith(b"data: ") and b"\n" not in ev and b"\r" not in ev, ev
        payloads.append(json.loads(ev[len(b"data: "):]))
    assert len(payloads) >= 2
    assert all(p["object"] == obj for p in payloads)
    return payloads


def test_sse_framing_bytewise(server, model_name):
    r = call(server.http_url, "POST", "/v1/completions",
             {"model": model_name, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0,
              "stream": True, "stream_options": {"include_usage": True}})
    p = check_sse(r, "text_completion")
    assert p[-1]["choices"] == [] and p[-1]["usage"]["completion_tokens"] == 5
    assert all("usage" in x and x["usage"] is None for x in p[:-1])
    assert p[-2]["choices"][0]["finish_reason"] == "length"
    r = call(server.http_url, "POST", "/v1/chat/completions",
             {"model": model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
              "temperature": 0, "stream": True})
    p = check_sse(r, "chat.completion.chunk")
    assert p[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert p[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_client_disconnect_cancels_the_sequence(server, model_name):
    aborted = 'svdq_request_success_total{finished_reason="abort"}'
    before = wait_settled(server)
    body = json.dumps({"model": model_name, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 4000, "temperature": 0,
                       "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=60)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        buf = b""
        while buf.count(b"data: ") < 4:  # a few events of a long generation
            data = s.recv(65536)
            assert data, f"the stream ended early: {buf!r}"
            buf += data
        assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
        assert b"[DONE]" not in buf
        during = scrape(server)
        assert during["svdq_num_requests_running"] == 1 and during["svdq_kv_cache_blocks_used"] > 0
    finally:
        s.close()
    start = time.time()
    after = wait_settled(server, timeout=10)
    assert time.time() - start < 10
    assert after.get(aborted, 0) == before.get(aborted, 0) + 1


# ----------------------------------------------------------------------------- lm-evaluation-harness

MC_DOCS = [
    ("The capital of France is", ["Paris", "London", "Rome"], 0),
    ("The capital of Japan is", ["Tokyo", "Madrid", "Cairo"], 0),
    ("Water freezes at zero degrees", ["Celsius", "Kelvin"], 0),
    ("The sun rises in the", ["east", "west"], 0),
    ("A week has seven", ["days", "years", "apples"], 0),
    ("Two plus two equals", ["four", "seven"], 0),
    ("The opposite of hot is", ["cold", "blue", "fast"], 0),
    ("Cats like to chase", ["mice", "clouds"], 0),
    ("The color of grass is", ["green", "purple"], 0),
    ("Bees make", ["honey", "steel"], 0),
    ("The largest ocean on Earth is the", ["Pacific", "Arctic"], 0),
    ("A triangle has three", ["sides", "wheels"], 0),
    ("Ice is frozen", ["water", "bread"], 0),
    ("The first month of the year is", ["January", "October"], 0),
    ("Birds can", ["fly", "swim underwater forever"], 0),
    ("The moon orbits the", ["Earth", "Sun's shadow"], 0),
    ("People read books in a", ["library", "volcano"], 0),
    ("A baby cat is called a", ["kitten", "puppy", "calf"], 0),
    ("The chemical symbol for gold is", ["Au", "Ag"], 0),
    ("Shakespeare wrote", ["Hamlet", "The Odyssey"], 0),
    ("The number after nine is", ["ten", "three"], 0),
    ("Fish live in", ["water", "trees"], 0),
    ("In the morning people eat", ["breakfast", "dinner"], 0),
    ("The tallest animal is the", ["giraffe", "mouse"], 0),
]


def write_task(tmp_path, name="svdq_openai_mc"):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": l}) + "\n" for q, c, l in MC_DOCS))
    (tmp_path / f"{name}.yaml").write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return name


def run_lm_eval(tmp_path, model_args, limit=None):
    import lm_eval
    from lm_eval.tasks import TaskManager
    task = write_task(tmp_path)
    out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=[task],
                                  task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True,
                                  limit=limit, bootstrap_iters=0)
    return out["results"][task], sorted(out["samples"][task], key=lambda s: s["doc_id"])


@pytest.fixture
def lm_eval_env(monkeypatch, tmp_path):
    # Local data only; nothing from the Hugging Face hub.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def lm_eval_model_args(base, model_name, tokenizer_dir, **extra):
    # tokenizer_backend=huggingface with a local tokenizer directory: lm_eval needs the
    # token count of each context; "auto" would first probe the server for vLLM's
    # /tokenizer_info and /tokenize (404 here) and then look for `model` on the hub.
    # batch_size=4 sends four token-id prompts in one request (a list of lists of ids).
    args = dict(base_url=f"{base}/v1/completions", model=model_name, tokenizer_backend="huggingface",
                tokenizer=str(tokenizer_dir), batch_size=4, max_retries=1, num_concurrent=1)
    args.update(extra)
    return ",".join(f"{k}={v}" for k, v in args.items())


def test_lm_eval_local_completions(server, stubs, channel, model_name, hf_tokenizer_dir, tmp_path, lm_eval_env):
    model_args = lm_eval_model_args(server.http_url, model_name, hf_tokenizer_dir)
    results, samples = run_lm_eval(tmp_path, model_args)
    acc = results["acc,none"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert len(samples) == len(MC_DOCS)
    # lm_eval's loglikelihoods (sum of echoed token_logprobs past the context) are what the
    # gRPC front's prompt_logprobs give for the same tokens.
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    lm = LocalCompletionsAPI.create_from_arg_string(model_args)
    for s in samples[:3]:
        for (context, continuation), resp in zip(s["arguments"], s["resps"]):
            ll, is_greedy = resp[0]
            assert isinstance(is_greedy, bool)
            ctx, cont = lm._encode_pair(context, continuation)
            g = grpc_generate(stubs, channel, token_ids=dict(ids=ctx + cont), max_tokens=1, prompt_logprobs=True)
            assert len(g["prompt_logprobs"]) == len(ctx) + len(cont) - 1
            want = sum(g["prompt_logprobs"][len(ctx) - 1:])
            assert abs(ll - want) <= 1e-3, (context, continuation, ll, want)
            # is_greedy (each continuation token is the top-1 of its position) is what greedy
            # decoding from the context gives.
            greedy = grpc_generate(stubs, channel, token_ids=dict(ids=ctx), max_tokens=len(cont))["ids"]
            assert is_greedy == (greedy == cont), (context, continuation, greedy, cont)
    # The same through string prompts (tokenized_requests=False: lm_eval decodes its ids and
    # the server tokenizes the text again).
    string_args = lm_eval_model_args(server.http_url, model_name, hf_tokenizer_dir, tokenized_requests=False)
    _, string_samples = run_lm_eval(tmp_path, string_args, limit=6)
    for a, b in zip(samples[:6], string_samples):
        for ra, rb in zip(a["resps"], b["resps"]):
            assert abs(ra[0][0] - rb[0][0]) <= 1e-3 and ra[0][1] == rb[0][1]


def test_echo_logprobs_keep_a_generated_end_of_sequence_token(server, stubs, channel, model_name):
    """lm_eval drops the last entry of token_logprobs ([ctxlen:-1]), taking it to be the
    one generated token. When that token is the end-of-sequence token it must still be
    there (as in OpenAI's API), or lm_eval would drop a continuation token instead."""
    pb, pb_grpc = stubs
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n2+2 equals 4."
    g = grpc_generate(stubs, channel, text=text, max_tokens=1, logprobs=1)
    if g["final"].finish_reason != pb.FINISH_REASON_STOP:
        pytest.skip("the model does not end this turn right away")
    ids = list(pb_grpc.GenerationStub(channel).Tokenize(pb.TokenizeRequest(text=text), timeout=30).ids)
    r = call(server.http_url, "POST", "/v1/completions", {"model": model_name, "prompt": [ids], "max_tokens": 1,
                                                          "temperature": 0, "logprobs": 1, "echo": True, "seed": 1234})
    assert r.status == 200, r
    c = r.json()["choices"][0]
    assert c["finish_reason"] == "stop"
    assert r.json()["usage"]["completion_tokens"] == 1
    assert len(c["logprobs"]["token_logprobs"]) == len(ids) + 1
    assert len(c["logprobs"]["tokens"]) == len(c["logprobs"]["top_logprobs"]) == len(ids) + 1
    assert close(c["logprobs"]["token_logprobs"][-1], g["logprobs"][0].logprob)


# ----------------------------------------------------------------------------- bad requests

BAD = [
    ("/v1/completions", b'{"model": "M", "prompt": "hi", ', 400),                   # invalid JSON
    ("/v1/completions", b'[1, 2]', 400),                                            # not an object
    ("/v1/completions", b'{"model": "M", "prompt": "\xff\xfe"}', 400),              # not UTF-8
    ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": "abc"}, 400),
    ("/v1/completions", {"model": "M", "prompt": "hi", "temperature": "x"}, 400),
    ("/v1/completions", {"model": "M", "prompt": 5}, 400),
    ("/v1/completions", {"model": "M"}, 400),                                       # no prompt
    ("/v1/completions", {"model": "M", "prompt": "hi", "n": 2}, 400),
    ("/v1/completions", {"model": "M", "prompt": "hi", "logprobs": 50}, 400),
    ("/v1/completions", {"model": "M", "prompt": "hi", "temperature": -1}, 400),
    ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": -5}, 400),
    ("/v1/completions", {"model": "M", "prompt": "hi", "max_tokens": 100000}, 400),  # past the context
    ("/v1/completions", {"model": "M", "prompt": "hi", "top_p": 1.5}, 400),
    ("/v1/completions", {"model": "M", "prompt": "hi", "stream": "yes"}, 400),
    ("/v1/completions", {"model": "M", "prompt": [[49152]]}, 400),                  # outside the vocabulary
    ("/v1/completions", {"model": "M", "prompt": "hi", "stop": 7}, 400),
    ("/v1/completions", {"model": "no-such-model", "prompt": "hi"}, 404),
    ("/v1/chat/completions", {"model": "M", "messages": "hi"}, 400),
    ("/v1/chat/completions", {"model": "M", "messages": []}, 400),
    ("/v1/chat/completions", {"model": "M", "messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 30,
                              "logprobs": True}, 400),
    ("/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "hi"}], "n": 3}, 400),
    ("/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("/v1/nothing", {"model": "M", "prompt": "hi"}, 404),
    ("/v2/completions", {"model": "M", "prompt": "hi"}, 404),
]


@pytest.mark.parametrize("path, body, status", BAD, ids=[f"{i}-{p}-{s}" for i, (p, _, s) in enumerate(BAD)])
def test_bad_requests_get_openai_errors(server, model_name, path, body, status):
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"M"', json.dumps(model_name)))
    elif isinstance(body, bytes):
        body = body.replace(b'"M"', json.dumps(model_name).encode())
    assert_error(call(server.http_url, "POST", path, body), status)
    # The server keeps serving.
    ok = call(server.http_url, "POST", "/v1/completions", {"model": model_name, "prompt": "Hi", "max_tokens": 1})
    assert ok.status == 200, ok


def test_unknown_get_path_is_404(server):
    assert_error(call(server.http_url, "GET", "/v1/nothing"), 404)
    assert_error(call(server.http_url, "GET", "/nothing"), 404)


def test_body_over_the_limit_is_413(server, model_name):
    body = json.dumps({"model": model_name, "prompt": "a " * 40000, "max_tokens": 1}).encode()  # 80 KB > 64K
    try:
        r = call(server.http_url, "POST", "/v1/completions", body)
    except (BrokenPipeError, ConnectionResetError) as e:
        pytest.fail(f"the connection was dropped instead of a 413 answer: {e!r}")
    assert_error(r, 413)
    ok = call(server.http_url, "POST", "/v1/completions", {"model": model_name, "prompt": "Hi", "max_tokens": 1})
    assert ok.status == 200, ok


def test_api_request_metrics(server, stubs, channel, model_name):
    before = scrape(server)
    assert call(server.http_url, "POST", "/v1/completions",
                {"model": model_name, "prompt": "Hi", "max_tokens": 1}).status == 200
    assert call(server.http_url, "POST", "/v1/completions", b"{").status == 400
    grpc_generate(stubs, channel, text="Hi", max_tokens=1)
    after = scrape(server)

    def count(m, front, code=None):
        return sum(v for k, v in m.items() if k.startswith("svdq_api_requests_total{") and f'front="{front}"' in k
                   and (code is None or f'code="{code}"' in k))
    series = {k: v for k, v in after.items() if k.startswith("svdq_api_requests_total")}
    assert count(after, "http", 200) >= count(before, "http", 200) + 1, series
    assert count(after, "http", 400) >= count(before, "http", 400) + 1, series
    assert count(after, "grpc") >= count(before, "grpc") + 1, series


def test_client_disconnect_during_a_whole_response_cancels_too(server, model_name):
    """As vLLM does: a client that gives up on a
    non-streamed request (a timeout; the openai SDK then retries, twice by default) must not
    leave its sequence generating up to max_tokens (on chat, up to the context limit)."""
    wait_settled(server)
    body = json.dumps({"model": model_name, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 300,
                       "temperature": 0}).encode()
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=60)
    try:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        deadline = time.time() + 30
        while scrape(server)["svdq_num_requests_running"] < 1:
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        s.close()
    try:
        wait_settled(server, timeout=5)
    except pytest.fail.Exception:
        wait_settled(server, timeout=180)  # leave the server idle for the tests after this one
        pytest.fail("the sequence kept generating after its client went away")


# ----------------------------------------------------------------------------- TLS and API keys

KEYS = ["key-alpha-0123456789", "key-bravo-9876543210"]
FLAG_KEY = "key-charlie-5555555555"
SERVED_NAME = "svdq-test-model"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    (d / "keys.txt").write_text(f"# svdq-serve test keys\n\n{KEYS[0]}  \n# another client\n{KEYS[1]}\n\n")
    return d


@pytest.fixture(scope="module")
def secure_server(model_path, tls_files):
    s = Server(model_path, "cpu", extra=["--tls-cert", str(tls_files / "cert.pem"),
                                         "--tls-key", str(tls_files / "key.pem"),
                                         "--api-key-file", str(tls_files / "keys.txt"), "--api-key", FLAG_KEY,
                                         "--served-model-name", SERVED_NAME])
    s.https_url = f"https://127.0.0.1:{s.http_port}"
    s.cafile = str(tls_files / "cert.pem")
    s.ssl_ctx = ssl.create_default_context(cafile=s.cafile)
    s.cert = (tls_files / "cert.pem").read_bytes()
    try:
        wait_http_ready(s, s.https_url, ctx=s.ssl_ctx)
    except BaseException:
        s.stop()
        raise
    yield s
    s.stop()


def secure_channel(server):
    return grpc.secure_channel(server.addr, grpc.ssl_channel_credentials(root_certificates=server.cert),
                               options=[("grpc.ssl_target_name_override", "localhost")])


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def test_tls_on_both_fronts(secure_server, stubs):
    import openai
    pb, pb_grpc = stubs
    s = secure_server
    r = call(s.https_url, "GET", "/v1/models", headers=bearer(KEYS[0]), ctx=s.ssl_ctx)
    assert r.status == 200 and r.json()["data"][0]["id"] == SERVED_NAME
    c = openai.OpenAI(base_url=s.https_url + "/v1", api_key=KEYS[1], max_retries=0, timeout=TIMEOUT,
                      http_client=openai.DefaultHttpxClient(verify=s.ssl_ctx))
    try:
        r = c.completions.create(model=SERVED_NAME, prompt="The capital of France is", max_tokens=4, temperature=0)
        with secure_channel(s) as ch:
            g = grpc_generate(stubs, ch, metadata=[("authorization", f"Bearer {KEYS[0]}")],
                              text="The capital of France is", max_tokens=4)
        assert r.choices[0].text == g["text"] and r.model == SERVED_NAME
        chat = c.chat.completions.create(model=SERVED_NAME, messages=CHATS[0], max_tokens=3, temperature=0)
        assert chat.usage.completion_tokens <= 3
    finally:
        c.close()
    # An untrusted certificate is refused by the client.
    with pytest.raises(ssl.SSLError):
        call(s.https_url, "GET", "/health", ctx=ssl.create_default_context())


def test_plain_connections_to_tls_ports_fail(secure_server, stubs):
    s = secure_server
    try:
        r = call(f"http://127.0.0.1:{s.http_port}", "GET", "/v1/models", headers=bearer(KEYS[0]), timeout=10)
    except (OSError, http.client.HTTPException):
        pass
    else:
        assert r.status >= 400 and b'"data"' not in r.body, r
    pb, pb_grpc = stubs
    with grpc.insecure_channel(s.addr) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GenerationStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10,
                                                     metadata=[("authorization", f"Bearer {KEYS[0]}")])
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_api_keys_on_http(secure_server):
    import openai
    s = secure_server
    req = {"model": SERVED_NAME, "prompt": "Hi", "max_tokens": 1}
    for key in KEYS + [FLAG_KEY]:
        assert call(s.https_url, "POST", "/v1/completions", req, headers=bearer(key), ctx=s.ssl_ctx).status == 200
        assert call(s.https_url, "GET", "/v1/models", headers=bearer(key), ctx=s.ssl_ctx).status == 200
    for headers in [{}, bearer("wrong-key"), bearer(""), {"Authorization": KEYS[0]}, bearer(KEYS[0] + "x"),
                    bearer(KEYS[0][:-1])]:
        for method, path, body in [("POST", "/v1/completions", req), ("GET", "/v1/models", None),
                                   ("POST", "/v1/chat/completions",
                                    {"model": SERVED_NAME, "messages": [{"role": "user", "content": "Hi"}]})]:
            err = assert_error(call(s.https_url, method, path, body, headers=headers, ctx=s.ssl_ctx), 401)
            assert KEYS[0] not in err["message"]
    # The model name is checked after the key: a wrong key never learns which names exist.
    assert_error(call(s.https_url, "POST", "/v1/completions", dict(req, model="nope"), headers=bearer("bad"),
                      ctx=s.ssl_ctx), 401)
    # The openai SDK sees an AuthenticationError.
    c = openai.OpenAI(base_url=s.https_url + "/v1", api_key="wrong-key", max_retries=0, timeout=TIMEOUT,
                      http_client=openai.DefaultHttpxClient(verify=s.ssl_ctx))
    try:
        with pytest.raises(openai.AuthenticationError):
            c.completions.create(model=SERVED_NAME, prompt="Hi", max_tokens=1)
    finally:
        c.close()


def test_auth_scheme_is_case_insensitive(secure_server):
    # RFC 7235 section 2.1 / RFC 6750: the "Bearer" scheme name is case-insensitive.
    s = secure_server
    for scheme in ("bearer", "BEARER"):
        r = call(s.https_url, "GET", "/v1/models", headers={"Authorization": f"{scheme} {KEYS[0]}"}, ctx=s.ssl_ctx)
        assert r.status == 200, (scheme, r)


def test_api_keys_on_grpc(secure_server, stubs):
    pb, pb_grpc = stubs
    s = secure_server
    with secure_channel(s) as ch:
        stub = pb_grpc.GenerationStub(ch)
        for key in KEYS + [FLAG_KEY]:
            md = [("authorization", f"Bearer {key}")]
            g = grpc_generate(stubs, ch, metadata=md, text="Hi", max_tokens=2)
            assert g["final"].usage.completion_tokens >= 1
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30, metadata=md).name
        for md in [None, [("authorization", "Bearer wrong-key")], [("authorization", KEYS[0])]]:
            with pytest.raises(grpc.RpcError) as e:
                grpc_generate(stubs, ch, metadata=md, text="Hi", max_tokens=2)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as e:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30, metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert KEYS[0] not in (e.value.details() or "")


def test_health_and_metrics_stay_open(secure_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    s = secure_server
    r = call(s.https_url, "GET", "/health", ctx=s.ssl_ctx)
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert call(s.https_url, "GET", "/ready", ctx=s.ssl_ctx).status == 200
    with secure_channel(s) as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="svdq.v1.Generation"),
                                                 timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
    assert "svdq_num_requests_running" in scrape(s)


def test_abort_needs_the_owner_key(secure_server, stubs):
    pb, pb_grpc = stubs
    s = secure_server
    md_a = [("authorization", f"Bearer {KEYS[0]}")]
    md_b = [("authorization", f"Bearer {KEYS[1]}")]
    with secure_channel(s) as ch:
        stub = pb_grpc.GenerationStub(ch)
        stream = stub.Generate(pb.GenerateRequest(text="1, 2, 3, 4, 5, 6,", max_tokens=4000, ignore_eos=True,
                                                  request_id="owned-by-a"), timeout=TIMEOUT, metadata=md_a)
        assert next(stream).HasField("chunk")
        with pytest.raises(grpc.RpcError) as e:
            stub.Abort(pb.AbortRequest(request_id="owned-by-a"), timeout=10, metadata=md_b)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            stub.Abort(pb.AbortRequest(request_id="owned-by-a"), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert next(stream).HasField("chunk")  # still running
        stub.Abort(pb.AbortRequest(request_id="owned-by-a"), timeout=10, metadata=md_a)
        final = [r for r in stream if r.HasField("final")]
        assert final and final[0].final.finish_reason == pb.FINISH_REASON_CANCELLED


def test_lm_eval_over_https_with_a_key(secure_server, hf_tokenizer_dir, tmp_path, lm_eval_env, monkeypatch):
    # lm_eval's local-completions sends `Authorization: Bearer $OPENAI_API_KEY` and passes
    # requests only verify=True/False: a private CA comes through REQUESTS_CA_BUNDLE.
    monkeypatch.setenv("OPENAI_API_KEY", KEYS[1])
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", secure_server.cafile)
    results, samples = run_lm_eval(tmp_path, lm_eval_model_args(secure_server.https_url, SERVED_NAME,
                                                                hf_tokenizer_dir), limit=4)
    assert 0.0 <= results["acc,none"] <= 1.0 and len(samples) == 4


def self_signed(d, name):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1",
                    "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem")],
                   check=True, capture_output=True, timeout=60)
    return (d / f"{name}.pem").read_bytes(), (d / f"{name}.key").read_bytes()


def test_grpc_mutual_tls(model_path, stubs, tls_files, tmp_path):
    """--tls-client-ca: gRPC clients must present a certificate the CA signed."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    pb, pb_grpc = stubs
    client_cert, client_key = self_signed(tmp_path, "client")
    other_cert, other_key = self_signed(tmp_path, "stranger")
    s = Server(model_path, "cpu", extra=["--tls-cert", str(tls_files / "cert.pem"),
                                         "--tls-key", str(tls_files / "key.pem"),
                                         "--tls-client-ca", str(tmp_path / "client.pem")])
    try:
        ctx = ssl.create_default_context(cafile=str(tls_files / "cert.pem"))
        wait_http_ready(s, f"https://127.0.0.1:{s.http_port}", ctx=ctx)
        root = (tls_files / "cert.pem").read_bytes()
        opts = [("grpc.ssl_target_name_override", "localhost")]

        def channel(cert=None, key=None):
            return grpc.secure_channel(s.addr, grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                                                            certificate_chain=cert), options=opts)
        with channel(client_cert, client_key) as ch:
            g = grpc_generate(stubs, ch, text="The capital of France is", max_tokens=3)
            assert g["final"].usage.completion_tokens == 3
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="svdq.v1.Generation"),
                                                     timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        for cert, key in [(None, None), (other_cert, other_key)]:
            with channel(cert, key) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    pb_grpc.GenerationStub(ch).GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # The HTTP front keeps plain (server-side) TLS.
        r = call(f"https://127.0.0.1:{s.http_port}", "GET", "/v1/models", ctx=ctx)
        assert r.status == 200, r
    finally:
        s.stop()


def test_keys_never_reach_the_log_or_metrics(secure_server):
    # Runs after the tests above, which sent every key, right and wrong, on both fronts.
    s = secure_server
    text = s.output()
    body = call(f"http://127.0.0.1:{s.metrics_port}", "GET", "/metrics", timeout=10).body.decode()
    for key in KEYS + [FLAG_KEY]:
        assert key not in text, f"key {key} in the server log"
        assert key not in body, f"key {key} in the metrics"


# ----------------------------------------------------------------------------- queue full, draining

def test_queue_full_is_429_and_draining_is_503(model_path, stubs):
    pb, pb_grpc = stubs
    s = Server(model_path, "cpu", extra=["--shutdown-grace-seconds", "20", "--max-running", "1", "--max-waiting", "1"])
    try:
        s.wait_ready()
        wait_http_ready(s, s.http_url)
        name = call(s.http_url, "GET", "/v1/models").json()["data"][0]["id"]
        result = {}

        def run():
            try:
                with grpc.insecure_channel(s.addr) as ch:
                    result["out"] = grpc_generate(stubs, ch, text="1, 2, 3, 4, 5, 6,", max_tokens=4000,
                                                  ignore_eos=True, request_id="long-one")
            except grpc.RpcError as e:
                result["error"] = e.code()
        t = threading.Thread(target=run)
        t.start()
        deadline = time.time() + 60
        while scrape(s)["svdq_num_requests_running"] < 1:
            assert time.time() < deadline
            time.sleep(0.1)
        # One request waits (max-running 1); the next finds the queue full.
        waiting = {}

        def wait_one():
            waiting["r"] = call(s.http_url, "POST", "/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 1})
        w = threading.Thread(target=wait_one)
        w.start()
        deadline = time.time() + 30
        while scrape(s)["svdq_num_requests_waiting"] < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        assert_error(call(s.http_url, "POST", "/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 1}),
                     429)
        # Draining: /ready says 503 at once, /health stays 200, new requests get 503.
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        while call(s.http_url, "GET", "/ready", timeout=5).status != 503:
            assert time.time() < deadline, "/ready still 200 after SIGTERM"
            time.sleep(0.05)
        r = call(s.http_url, "GET", "/health", timeout=5)
        assert r.status == 200 and r.json() == {"status": "ok"}
        assert_error(call(s.http_url, "POST", "/v1/completions", {"model": name, "prompt": "Hi", "max_tokens": 1},
                          timeout=10), 503)
        # End the long request so that the server exits now rather than after the grace period.
        with grpc.insecure_channel(s.addr) as ch:
            try:
                pb_grpc.GenerationStub(ch).Abort(pb.AbortRequest(request_id="long-one"), timeout=10)
            except grpc.RpcError:
                pass
        assert s.proc.wait(timeout=60) == 0
        t.join(30)
        w.join(30)
        assert not w.is_alive() and waiting["r"].status in (200, 503), waiting
    finally:
        if s.proc.poll() is None:
            s.stop()
