"""Generation controls and the helper RPCs, through a real gRPC client: stop strings
(spanning tokens, never leaked), stop token ids, min_tokens, penalties, min_p, chat
messages rendered like the model's own template, Tokenize / Detokenize, GetServerInfo,
and the validation of each new field."""
import grpc
import jinja2
import pytest
from gguf import GGUFReader

from test_server_e2e import generate


def rpc(stubs, addr, method, request):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(addr) as ch:
        return getattr(pb_grpc.GenerationStub(ch), method)(request, timeout=60)


def chunks_of(stubs, addr, **req):
    """All chunk texts of a Generate call, and its final message."""
    pb, pb_grpc = stubs
    texts, final = [], None
    with grpc.insecure_channel(addr) as ch:
        for resp in pb_grpc.GenerationStub(ch).Generate(pb.GenerateRequest(**req), timeout=120):
            if resp.HasField("chunk"):
                texts.append(resp.chunk.text)
            else:
                final = resp.final
    return texts, final


def test_stop_string_spanning_tokens_is_never_sent(cpu_server, stubs):
    pb, _ = stubs
    prompt = "The capital of France is"
    ids, full, _ = generate(stubs, cpu_server.addr, text=prompt, max_tokens=12, ignore_eos=True)
    pieces = [rpc(stubs, cpu_server.addr, "Detokenize", pb.DetokenizeRequest(ids=[i])).text for i in ids]
    i = next(k for k in range(len(pieces) - 1) if len(pieces[k].strip()) >= 2 and len(pieces[k + 1]) >= 1)
    stop = pieces[i][-2:] + pieces[i + 1][:1]  # ends one token, starts the next
    expected = full[:full.find(stop)]
    texts, final = chunks_of(stubs, cpu_server.addr, text=prompt, max_tokens=12, ignore_eos=True, stop=[stop, "zzzz"])
    assert "".join(texts) == expected
    assert all(stop not in t for t in texts)
    assert final.finish_reason == pb.FINISH_REASON_STOP and final.stop_reason == stop


def test_stop_token_ids_and_min_tokens(cpu_server, stubs):
    pb, _ = stubs
    ids, _, _ = generate(stubs, cpu_server.addr, text="The capital of France is", max_tokens=8, ignore_eos=True)
    got, _, final = generate(stubs, cpu_server.addr, text="The capital of France is", max_tokens=8,
                             stop_token_ids=[ids[2]])
    assert got == ids[:3] and final.finish_reason == pb.FINISH_REASON_STOP and final.stop_reason == str(ids[2])
    # A chat turn ends with EOS after a few tokens; min_tokens keeps it going.
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Say hello.")])
    short, _, f1 = generate(stubs, cpu_server.addr, chat=chat, max_tokens=80)
    assert f1.finish_reason == pb.FINISH_REASON_STOP and len(short) < 60  # ended by EOS
    longer, _, _ = generate(stubs, cpu_server.addr, chat=chat, max_tokens=80, min_tokens=len(short) + 10)
    assert len(longer) >= len(short) + 10
    assert longer[:len(short) - 1] == short[:-1]  # the same until EOS would have been chosen


def test_min_p_one_is_greedy_and_penalties_change_repetition(cpu_server, stubs):
    pb, _ = stubs
    prompt = "hello hello hello hello hello hello"
    greedy, _, _ = generate(stubs, cpu_server.addr, text=prompt, max_tokens=20, ignore_eos=True)
    sampled, _, _ = generate(stubs, cpu_server.addr, text=prompt, max_tokens=20, ignore_eos=True,
                             sampling=pb.SamplingParams(temperature=1.0, min_p=1.0, seed=5))
    assert sampled == greedy  # min_p = 1 keeps only the most likely token
    penalized, _, _ = generate(stubs, cpu_server.addr, text=prompt, max_tokens=20, ignore_eos=True,
                               sampling=pb.SamplingParams(frequency_penalty=2.0, repetition_penalty=1.5))
    assert max(penalized.count(t) for t in set(penalized)) < max(greedy.count(t) for t in set(greedy))


def test_chat_matches_the_model_template(cpu_server, stubs, model_path):
    pb, _ = stubs
    f = GGUFReader(str(model_path)).fields["tokenizer.chat_template"]
    template = bytes(f.parts[f.data[0]]).decode()
    conversations = [
        [dict(role="user", content="What is the capital of France?")],
        [dict(role="system", content="You answer in French."), dict(role="user", content="Hello!")],
        [dict(role="user", content="Hi"), dict(role="assistant", content="Hello, how can I help?"),
         dict(role="user", content="Tell me a joke.")],
    ]
    for conv in conversations:
        rendered = jinja2.Template(template).render(messages=conv, add_generation_prompt=True)
        want = rpc(stubs, cpu_server.addr, "Tokenize", pb.TokenizeRequest(text=rendered)).ids
        chat = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in conv])
        got = rpc(stubs, cpu_server.addr, "Tokenize", pb.TokenizeRequest(chat=chat)).ids
        assert list(got) == list(want)
    bad = pb.ChatMessages(messages=[pb.ChatMessage(role="wizard", content="hi")])
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, cpu_server.addr, chat=bad, max_tokens=2)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown role 'wizard'" in e.value.details()


def test_tokenize_detokenize_and_server_info(cpu_server, stubs):
    pb, _ = stubs
    text = "Ünïcödé text, 123 and emoji 🤖"
    ids = rpc(stubs, cpu_server.addr, "Tokenize", pb.TokenizeRequest(text=text)).ids
    assert rpc(stubs, cpu_server.addr, "Detokenize", pb.DetokenizeRequest(ids=ids)).text == text
    with pytest.raises(grpc.RpcError) as e:
        rpc(stubs, cpu_server.addr, "Detokenize", pb.DetokenizeRequest(ids=[10 ** 6]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = rpc(stubs, cpu_server.addr, "GetServerInfo", pb.GetServerInfoRequest())
    assert info.kv_cache_mode == "keys fp32, values fp32" and info.kv_bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert info.key_mode == "fp32" and info.value_mode == "fp32" and info.key_compression_ratio == 0.5
    assert info.kv_capacity_tokens == info.kv_blocks_total * info.kv_block_size > 0
    assert info.prefix_caching and info.max_running == 16


@pytest.mark.parametrize("req, fragment", [
    (dict(sampling=dict(min_p=1.5)), "min_p"),
    (dict(sampling=dict(repetition_penalty=3)), "repetition_penalty"),
    (dict(sampling=dict(presence_penalty=-3)), "presence_penalty"),
    (dict(stop=[""]), "stop string"),
    (dict(stop=["x"] * 17), "at most 16"),
    (dict(stop_token_ids=[49152]), "outside the vocabulary"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens"),
    (dict(min_tokens=-1), "min_tokens"),
])
def test_new_fields_are_validated(cpu_server, stubs, req, fragment):
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, cpu_server.addr, text="hi", **req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in e.value.details()


def test_logprobs_and_prompt_logprobs_match_the_reference(cpu_server, stubs, probe, hf_model):
    import torch
    pb, pb_grpc = stubs
    text = "The capital of France is"
    ids = probe("tokenize", stdin=[text])[0]
    chunks = []
    with grpc.insecure_channel(cpu_server.addr) as ch:
        for resp in pb_grpc.GenerationStub(ch).Generate(
                pb.GenerateRequest(text=text, max_tokens=3, logprobs=5, prompt_logprobs=True), timeout=120):
            if resp.HasField("chunk"):
                chunks.append(resp.chunk)
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].double(), -1)
    # Prompt: log p(token t+1 | tokens <= t), fp32 on both sides: within 2e-3.
    got = list(chunks[0].prompt_logprobs)
    want = [ref[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) < 2e-3
    assert all(len(c.prompt_logprobs) == 0 for c in chunks[1:])
    # Generated: greedy picks the top-1, alternatives are sorted, the first matches the reference.
    for c in chunks:
        (lp,) = c.logprobs
        assert lp.token_id == c.token_ids[0] and len(lp.top) == 5
        assert lp.top[0].token_id == lp.token_id and abs(lp.top[0].logprob - lp.logprob) < 1e-6
        assert all(a.logprob >= b.logprob for a, b in zip(lp.top, lp.top[1:]))
    assert abs(chunks[0].logprobs[0].logprob - ref[-1, chunks[0].token_ids[0]].item()) < 2e-3
    with pytest.raises(grpc.RpcError) as e:
        generate(stubs, cpu_server.addr, text="hi", logprobs=21)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_token_logprobs_in_a_mixed_batch_match_each_request_alone(cpu_server, stubs):
    # Three requests decoded together, asking for 0, 2 and 5 alternatives and one for none:
    # the engine computes every row's logprobs in one pass; each stream must carry exactly
    # what it asked for, equal (to fp32 batching noise) to the same request served alone.
    import threading
    pb, pb_grpc = stubs
    asks = [("The capital of France is", 0), ("Once upon a time", 2), ("1, 2, 3,", 5), ("Hello", -1)]

    def run(text, k):
        out = []
        with grpc.insecure_channel(cpu_server.addr) as ch:
            req = pb.GenerateRequest(text=text, max_tokens=6, ignore_eos=True)
            if k >= 0:
                req.logprobs = k
            for resp in pb_grpc.GenerationStub(ch).Generate(req, timeout=120):
                if resp.HasField("chunk"):
                    out.append((list(resp.chunk.token_ids),
                                [(lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
                                 for lp in resp.chunk.logprobs]))
        return out

    alone = [run(t, k) for t, k in asks]
    together = [None] * len(asks)
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, run(*asks[i]))) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (text, k), a, b in zip(asks, alone, together):
        assert [ids for ids, _ in a] == [ids for ids, _ in b], text
        for (_, la), (_, lb) in zip(a, b):
            if k < 0:
                assert la == [] and lb == []
                continue
            ((ta, va, topa),), ((tb, vb, topb),) = la, lb
            assert ta == tb and abs(va - vb) < 1e-4
            assert len(topa) == len(topb) == k
            assert [t for t, _ in topa] == [t for t, _ in topb]
            assert all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(topa, topb))


def test_prompt_logprobs_of_a_long_prompt_match_the_reference(cpu_server, stubs, probe, hf_model):
    # 600+ prompt tokens: the server makes logits 256 rows at a time (bounded memory); every
    # row block, and the seams between them, must still match the reference.
    import torch
    pb, pb_grpc = stubs
    text = " ".join(f"Item {i} of the list is the colour number {i * 7 % 13}." for i in range(45))
    ids = probe("tokenize", stdin=[text])[0]
    assert len(ids) > 2 * 256 + 1
    with grpc.insecure_channel(cpu_server.addr) as ch:
        first = next(iter(pb_grpc.GenerationStub(ch).Generate(
            pb.GenerateRequest(text=text, max_tokens=1, prompt_logprobs=True), timeout=300)))
    got = list(first.chunk.prompt_logprobs)
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].double(), -1)
    want = [ref[t, ids[t + 1]].item() for t in range(len(ids) - 1)]
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, want)) < 5e-3
