"""The server on a Hugging Face directory and on a synthetic model, end to end through gRPC.
HF: a tiny random Llama-3-style checkpoint (hf_checkpoints.py) with a byte-level BPE
tokenizer.json trained here, a Llama 3 chat template and two end-of-sequence ids; greedy output
equals transformers' greedy generate token for token (fp32, CPU); text and chat prompts tokenize
as `tokenizers` / transformers do. Synthetic: labelled as such, and it generates."""
import json

import grpc
import pytest
import torch

from conftest import Server
from corpus import corpus
from hf_checkpoints import VOCAB, make_checkpoint
from test_server_e2e import generate

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
N = 12


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    folder = tmp_path_factory.mktemp("llama3_served")
    model = make_checkpoint("llama3", folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=VOCAB - 16, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    assert tok.get_vocab_size() <= VOCAB
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast"}))
    eos = [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|eot_id|>")]
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos}))
    return folder, model, tok, eos


@pytest.fixture(scope="module")
def hf_server(hf_dir):
    s = Server(hf_dir[0], "cpu", extra=["--kv-cache-bytes", "16M"])
    s.wait_ready()
    yield s
    assert s.stop() == 0, s.output()


def test_model_info_names_the_source(hf_server, stubs, hf_dir):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(hf_server.addr) as ch:
        info = pb_grpc.GenerationStub(ch).GetModelInfo(pb.GetModelInfoRequest())
    assert info.source == "huggingface" and not info.synthetic
    assert info.architecture == "llama" and info.vocab_size == VOCAB and info.num_kv_heads == 2
    assert list(info.eos_token_ids) == [hf_dir[3][1], hf_dir[3][0]] or sorted(info.eos_token_ids) == sorted(hf_dir[3])


def test_greedy_matches_transformers(hf_server, stubs, hf_dir):
    _, model, tok, _ = hf_dir
    for text in ["The history of the Roman Empire", "def f(x):\n    return", "1, 2, 3, 4,"]:
        ids = tok.encode(text).ids  # with <|begin_of_text|>, as the server adds it to text
        got, got_text, final = generate(stubs, hf_server.addr, text=text, max_tokens=N, ignore_eos=True)
        assert final.usage.prompt_tokens == len(ids)
        with torch.no_grad():
            x = torch.tensor([ids])
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N, do_sample=False,
                                 eos_token_id=None, pad_token_id=VOCAB - 1)
        want = out[0, len(ids):].tolist()
        assert got == want, f"{text!r}: server {got} != transformers {want}"
        assert got_text == tok.decode(got, skip_special_tokens=True)


def test_text_and_chat_tokenize_like_the_reference(hf_server, stubs, hf_dir):
    from transformers import PreTrainedTokenizerFast
    folder, _, tok, _ = hf_dir
    pb, pb_grpc = stubs
    ref = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>")
    ref.chat_template = LLAMA3_TEMPLATE
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    want_chat = ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    if hasattr(want_chat, "keys"):  # a BatchEncoding in recent transformers
        want_chat = want_chat["input_ids"]
    with grpc.insecure_channel(hf_server.addr) as ch:
        stub = pb_grpc.GenerationStub(ch)
        for text in corpus()[:40]:
            got = list(stub.Tokenize(pb.TokenizeRequest(text=text)).ids)
            assert got == tok.encode(text).ids, text
        msgs = pb.ChatMessages(messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in chat])
        assert list(stub.Tokenize(pb.TokenizeRequest(chat=msgs)).ids) == list(want_chat)


def test_synthetic_model_is_labelled_and_generates(stubs):
    s = Server("synthetic:tiny", "cpu", extra=["--kv-cache-bytes", "16M"])
    try:
        s.wait_ready()
        pb, pb_grpc = stubs
        with grpc.insecure_channel(s.addr) as ch:
            info = pb_grpc.GenerationStub(ch).GetModelInfo(pb.GetModelInfoRequest())
        assert info.synthetic and info.source == "synthetic" and "synthetic" in info.name
        ids, _, final = generate(stubs, s.addr, text="hello", max_tokens=8, ignore_eos=True)
        assert len(ids) == 8 and final.usage.prompt_tokens == 5  # five bytes
        assert "SYNTHETIC MODEL" in s.output()
    finally:
        assert s.stop() == 0, s.output()


def test_unknown_synthetic_name_is_refused():
    s = Server("synthetic:gpt-5", "cpu")
    assert s.proc.wait(timeout=60) != 0
    assert "unknown synthetic model 'gpt-5'" in s.output() and "llama-3-8b" in s.output()
