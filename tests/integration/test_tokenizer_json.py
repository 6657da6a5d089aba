"""Tokenizer::FromHuggingFace and the chat formats against Hugging Face `tokenizers` and
`transformers`, through svdq-tokenize. Each tokenizer kind is trained here, on the shared
corpus, with `tokenizers`' own trainer and saved as tokenizer.json (+ tokenizer_config.json):
Llama 3 style (Split with the Llama 3 regex, byte-level, ignore_merges), Qwen2 style (with
its NFC normalizer), SmolLM/GPT-2 style (Digits + ByteLevel regex), and SentencePiece-style
BPE with byte fallback in its two spellings (Llama 2's normalizer, and the Metaspace
pre-tokenizer). Chat rendering is compared with apply_chat_template on the canonical templates.
svdq's NFC/NFD (Unicode 9.0.0 tables, the version `tokenizers` uses) is compared with
`tokenizers`' normalizers on every code point and with Python's unicodedata on generated text."""
import json
import random
import subprocess
import unicodedata

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from conftest import BUILD
from corpus import corpus

EXE = BUILD / "tools" / "svdq-tokenize"

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    r"message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    r"{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    r"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# Llama 3.1's template, tool branches included (they stay unused without tools).
LLAMA31_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""
# Llama 3.2's header takes today's date from strftime_now.
LLAMA32_TEMPLATE = LLAMA31_TEMPLATE.replace(
    '{%- set date_string = "26 Jul 2024" %}',
    '{%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}'
    '{%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}')

LLAMA2_TEMPLATE = (
    r"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    r"messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    r"{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    r"raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    r"loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' "
    r"+ message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == "
    r"'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    r"{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")

MISTRAL_V01_TEMPLATE = (
    r"{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
    r"raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
    r"message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    r"'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant "
    r"roles are supported!') }}{% endif %}{% endfor %}")
MIXTRAL_TEMPLATE = MISTRAL_V01_TEMPLATE.replace("eos_token + ' ' }}", "eos_token}}")
MISTRAL_V03_TEMPLATE = (
    r"{{bos_token}}{% set user_messages = messages | selectattr('role', 'equalto', 'user') | list %}{% for message in "
    r"messages %}{% if message['role'] == 'user' %}{% if message == user_messages[-1] %}{% if tools %}"
    r"{{'[AVAILABLE_TOOLS]'+ tools|string + '[/AVAILABLE_TOOLS]'}}{% endif %}{{ '[INST]' + message['content'] + "
    r"'[/INST]' }}{% else %}{{ '[INST]' + message['content'] + '[/INST]' }}{% endif %}{% elif message['role'] == "
    r"'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token}}{% endif %}{% endfor %}")

CHATS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "  Hi there \n"}, {"role": "assistant", "content": "  Hello! How can I help?  "},
     {"role": "user", "content": "What is 2+2?\n\n"}],
    [{"role": "user", "content": "日本語 🤖"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": ""}],
]
SYSTEM_CHATS = [
    [{"role": "system", "content": " You are terse. "}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": " c "}],
]


# Text whose NFC differs from it: decomposed accents, Hangul jamo, singletons (ANGSTROM SIGN,
# OHM SIGN, CJK compatibility ideographs), composition exclusions (U+0958..), marks out of
# canonical order, Vietnamese, Devanagari nukta, Greek tonos, Hebrew points, kana voicing.
NFC_TEXTS = [
    "Cafe\u0301 au lait, re\u0301sume\u0301, nai\u0308ve, Zu\u0308rich, Ma\u0308dchen",
    "\u1100\u1161\u11a8\u1100\u1161 \u1112\u1161\u11ab\u1100\u1173\u11af \uac00\u11a8 \u110b\u1167\u11bc",
    "\u212b \u00c5ngstr\u00f6m A\u030angstro\u0308m \u2126 ohm \u212a kelvin",
    "Ti\u1ebfng Vi\u1ec7t: Tie\u0302\u0301ng Vie\u0323\u0302t co\u0301 da\u0302\u0301u, Vie\u0302\u0323t",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u0958 \u0959 \u095a \u0915\u093c\u0916\u093c \u0928\u093c",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u1f71 \u03b1\u0301 \u0391\u0313\u0300 \u1f80 \u0386",
    "\u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd \u05e9\u05b8\u05c1",
    "a\u0301\u0323 q\u0307\u0323 s\u0323\u0307 s\u0307\u0323 e\u0302\u0301 a\u0310\u0301 a\u031b\u0301",
    "\u304b\u3099 \u306f\u309a \uf900 \U0002f800 \u0344 \u1e69 \u01d5 \U0001d15e",
    "\u0301 leading mark, \u1100\u0301\u1161 blocked jamo",
]


def nfc_texts():
    """NFC_TEXTS plus the corpus lines whose NFD differs from them, decomposed."""
    decomposed = (unicodedata.normalize("NFD", t) for t in corpus())
    return NFC_TEXTS + [d for d in decomposed if d != unicodedata.normalize("NFC", d)]


def run(source, cmd, payload):
    args = [str(EXE), cmd] if source is None else [str(EXE), str(source), cmd]
    out = subprocess.run(args, input=json.dumps(payload), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"svdq-tokenize {cmd} failed: {out.stderr}")
    return json.loads(out.stdout)


def training_texts():
    prose = ("The tokenizer splits text into pieces, merges frequent pairs, and the model reads the ids. "
             "Numbers like 12345 and 2024-11-29, code like for (int i = 0; i < n; ++i) and words: don't, it's, "
             "they're. Café, naïve, über, Straße. 日本語のテキスト。 Привет, мир. ")
    return corpus() + [prose] * 20


def save(tok, path, config):
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def byte_level_tokenizer(pre, ignore_merges, specials, bos=None, normalizer=None, extra_texts=()):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_texts() + list(extra_texts) * 5, trainer)
    if ignore_merges:
        # Words the merges cannot build whole, added to the vocabulary: ignore_merges must
        # emit them as one token.
        d = json.loads(tok.to_str())
        for word, _ in pre.pre_tokenize_str(" jumps over the lazy dog 3.14159 résumé"):
            d["model"]["vocab"].setdefault(word, len(d["model"]["vocab"]))
        tok = Tokenizer.from_str(json.dumps(d))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken("[[custom]]", special=False, normalized=False)])
    if bos:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])])
    return tok


def sentencepiece_tokenizer(metaspace):
    """Vocabulary and merges trained on '▁'-joined words, then laid out as Llama 2's are:
    <unk> <s> </s>, the 256 byte tokens, then the merged pieces. limit_alphabet keeps rare
    characters (CJK, emoji) out, so they take the byte fallback."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    base.train_from_iterator(training_texts(), trainers.BpeTrainer(vocab_size=900, limit_alphabet=120,
                                                                   show_progress=False))
    trained = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """name -> (tokenizers.Tokenizer, directory, has a BOS post-processor)."""
    root = tmp_path_factory.mktemp("hf_tokenizers")
    out = {}
    llama3 = byte_level_tokenizer(
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        True, LLAMA3_SPECIALS, bos="<|begin_of_text|>")
    out["llama3"] = (llama3, save(llama3, root / "llama3", {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE}), True)
    qwen2 = byte_level_tokenizer(
        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_RE), behavior="isolated", invert=False),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
        False, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], normalizer=normalizers.NFC(),
        extra_texts=nfc_texts())
    assert json.loads(qwen2.to_str())["normalizer"] == {"type": "NFC"}
    out["qwen2"] = (qwen2, save(qwen2, root / "qwen2", {
        "bos_token": None, "eos_token": {"content": "<|im_end|>"}, "add_bos_token": False}), False)
    smol = byte_level_tokenizer(
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
        False, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    out["smollm"] = (smol, save(smol, root / "smollm", {"eos_token": "<|im_end|>"}), False)
    for name, metaspace in (("llama2", False), ("metaspace", True)):
        sp = sentencepiece_tokenizer(metaspace)
        out[name] = (sp, save(sp, root / name, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}), True)
    return out


KINDS = ["llama3", "qwen2", "smollm", "llama2", "metaspace"]


@pytest.mark.parametrize("kind", KINDS)
def test_encode_matches_tokenizers(kinds, kind):
    tok, path, _ = kinds[kind]
    texts = corpus() + ["a[[custom]]b <|eot_id|>x<|im_end|> <s>y</s>", "don'T WE'LL 'S ſ'ſ", "１２３ 4567 89"]
    texts += nfc_texts()
    assert len(texts) >= 300
    ours = run(path, "encode", texts)
    ref = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    bad = [(t, o, r) for t, o, r in zip(texts, ours, ref) if o != r]
    assert not bad, f"{kind}: {len(bad)} of {len(texts)} differ, first: {bad[0]!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_encode_prompt_matches_post_processor(kinds, kind):
    tok, path, has_bos = kinds[kind]
    texts = corpus()[:80]
    ours = run(path, "encode-prompt", texts)
    ref = [tok.encode(t, add_special_tokens=True).ids for t in texts]
    assert ours == ref
    assert all((o[:1] == [tok.token_to_id("<s>") or tok.token_to_id("<|begin_of_text|>")]) == has_bos for o in ours)


@pytest.mark.parametrize("kind", KINDS)
def test_decode_matches_tokenizers(kinds, kind):
    tok, path, _ = kinds[kind]
    texts = corpus()
    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    ours = run(path, "decode", ids)
    ref = [tok.decode(i, skip_special_tokens=True) for i in ids]
    bad = [(t, o, r) for t, o, r in zip(texts, ours, ref) if o != r]
    assert not bad, f"{kind}: {len(bad)} of {len(texts)} differ, first: {bad[0]!r}"
    # Where the format can give the text back, streaming decode does: not across skipped
    # special tokens, nor (Metaspace's "first" scheme) for text that starts with a space.
    specials = [a.content for a in tok.get_added_tokens_decoder().values() if a.special]
    checked = 0
    for t, o in zip(texts, ours):
        if any(s in t for s in specials) or (kind == "metaspace" and t.startswith(" ")):
            continue
        assert o == t, (kind, t, o)
        checked += 1
    assert checked >= 280


def test_ignore_merges_is_exercised(kinds):
    tok, path, _ = kinds["llama3"]
    ids = run(path, "encode", [" lazy dog"])[0]
    assert [tok.id_to_token(i) for i in ids] == ["Ġlazy", "Ġdog"]


def test_byte_fallback_and_streaming_never_split_characters(kinds):
    tok, path, _ = kinds["llama2"]
    ids = tok.encode("𝄞 x", add_special_tokens=False).ids  # U+1D11E: never seen in training
    assert [tok.id_to_token(i) for i in ids[:5]] == ["▁", "<0xF0>", "<0x9D>", "<0x84>", "<0x9E>"]
    assert run(path, "encode", ["𝄞 x"]) == [ids]
    # Three of its four bytes: nothing whole to emit, so Flush gives one U+FFFD; a BOS in
    # front is skipped and does not use up the start-of-text strip.
    assert run(path, "decode", [ids[:4], [1] + ids]) == ["\ufffd", "𝄞 x"]
    texts = corpus()
    fallback = sum(any(tok.id_to_token(i).startswith("<0x") for i in tok.encode(t).ids) for t in texts)
    assert fallback >= 20, "the corpus should exercise byte fallback"


def hf_chat(tok, template, bos, eos, chats):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    hf.chat_template = template
    return [hf.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]


@pytest.mark.parametrize("name,kind,template,bos,eos,system", [
    ("llama3", "llama3", LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", True),
    ("llama3.1", "llama3", LLAMA31_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", True),
    ("llama3.2", "llama3", LLAMA32_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>", True),
    ("llama2", "llama2", LLAMA2_TEMPLATE, "<s>", "</s>", True),
    ("mistral-v0.1", "metaspace", MISTRAL_V01_TEMPLATE, "<s>", "</s>", False),
    ("mixtral", "metaspace", MIXTRAL_TEMPLATE, "<s>", "</s>", False),
    ("mistral-v0.3", "metaspace", MISTRAL_V03_TEMPLATE, "<s>", "</s>", False),
])
def test_chat_matches_transformers(kinds, tmp_path, name, kind, template, bos, eos, system):
    tok, _, _ = kinds[kind]
    path = save(tok, tmp_path / name, {"bos_token": bos, "eos_token": eos, "chat_template": template})
    chats = CHATS + (SYSTEM_CHATS if system else [])
    assert run(path, "chat", chats) == hf_chat(tok, template, bos, eos, chats)
    if not system:  # the template raises on a system message; so does svdq
        with pytest.raises(RuntimeError, match="system"):
            run(path, "chat", SYSTEM_CHATS[:1])


def test_chat_template_list_takes_default(kinds, tmp_path):
    tok, _, _ = kinds["llama3"]
    path = save(tok, tmp_path / "list", {"eos_token": "<|eot_id|>", "chat_template": [
        {"name": "tool_use", "template": LLAMA2_TEMPLATE}, {"name": "default", "template": LLAMA3_TEMPLATE}]})
    assert run(path, "chat", CHATS[:1])[0].startswith("<|begin_of_text|><|start_header_id|>user")


def test_generation_config_eos_list_and_errors(kinds, tmp_path):
    tok, _, _ = kinds["llama3"]
    path = save(tok, tmp_path / "gen", {"bos_token": "<|begin_of_text|>"})
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.token_to_id("<|end_of_text|>"),
                                                                              tok.token_to_id("<|eot_id|>")]}))
    assert run(path, "encode", ["<|eot_id|>"]) == [[tok.token_to_id("<|eot_id|>")]]
    (path / "tokenizer.json").write_text((path / "tokenizer.json").read_text()[:5000])
    with pytest.raises(RuntimeError, match="tokenizer.json: not valid JSON"):
        run(path, "encode", ["x"])


def test_qwen2_nfc_normalizer_is_exercised(kinds):
    tok, path, _ = kinds["qwen2"]
    decomposed, composed = "Cafe\u0301 \u212b \u1100\u1161\u11a8", "Caf\u00e9 \u00c5 \uac01"
    ours = run(path, "encode", [decomposed, composed])
    assert ours[0] == ours[1] == tok.encode(composed, add_special_tokens=False).ids
    llama3_tok, llama3_path, _ = kinds["llama3"]  # no normalizer: the forms stay apart
    assert run(llama3_path, "encode", [decomposed])[0] != run(llama3_path, "encode", [composed])[0]


@pytest.mark.parametrize("normalizer", [
    {"type": "NFD"},
    {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Replace", "pattern": {"String": "\u0301"},
                                                            "content": ""}, {"type": "NFC"}]},
    {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "\u00e9"}, "content": "E"},
                                         {"type": "NFC"}]},
], ids=["nfd", "nfd-strip-acute-nfc", "replace-then-nfc"])
def test_normalizer_variants_match_tokenizers(kinds, tmp_path, normalizer):
    """The Qwen2 vocabulary under other normalizers: NFD alone, and NFC/NFD in a Sequence
    whose order matters (a Replace before NFC sees the decomposed text, after NFD the marks)."""
    tok, path, _ = kinds["qwen2"]
    d = json.loads(tok.to_str())
    d["normalizer"] = normalizer
    variant = Tokenizer.from_str(json.dumps(d))
    (tmp_path / "tokenizer.json").write_text(json.dumps(d))
    (tmp_path / "tokenizer_config.json").write_text((path / "tokenizer_config.json").read_text())
    texts = corpus() + nfc_texts()
    ours = run(tmp_path, "encode", texts)
    ref = [variant.encode(t, add_special_tokens=False).ids for t in texts]
    bad = [(t, o, r) for t, o, r in zip(texts, ours, ref) if o != r]
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {bad[0]!r}"
    assert ours != run(path, "encode", texts), "the variant should tokenize some text differently"


def test_nfc_nfd_match_tokenizers_on_every_code_point():
    """Every code point of planes 0-3 and 14 alone; every mark between 'a' and a class-1 and
    a class-230 mark (its class decides the order); every decomposition composed back. This
    pins the Unicode version to the one `tokenizers` uses (9.0.0): Python's unicodedata
    (newer) differs on marks assigned since, e.g. U+1DF6."""
    cps = [c for c in list(range(0x40000)) + list(range(0xE0000, 0xE1000)) if not 0xD800 <= c <= 0xDFFF]
    texts = [chr(c) for c in cps]
    texts += ["a" + chr(c) + m for c in cps if unicodedata.combining(chr(c)) for m in ("\u0334", "\u0301")]
    texts += [unicodedata.normalize("NFD", chr(c)) for c in cps if unicodedata.decomposition(chr(c))]
    nfc, nfd = normalizers.NFC(), normalizers.NFD()
    for form, ref in (("nfc", nfc), ("nfd", nfd)):
        ours = run(None, form, texts)
        bad = [(t, o) for t, o in zip(texts, ours) if o != ref.normalize_str(t)]
        assert not bad, f"{form}: {len(bad)} of {len(texts)} differ from tokenizers, first: {bad[0]!r}"
    assert run(None, "nfd", ["a\u1df6\u0334"]) == [nfd.normalize_str("a\u1df6\u0334")] == ["a\u1df6\u0334"]


def ranges(*rs):
    return [c for lo, hi in rs for c in range(lo, hi + 1)]


# Blocks where Unicode 9.0.0 and the venv's unicodedata agree (nothing normalization-relevant
# was assigned in them after 9.0), so unicodedata is a valid reference for the 9.0 tables.
BASES = ranges((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF), (0x370, 0x3FF), (0x1F00, 0x1FFF),
               (0x400, 0x4FF), (0x5D0, 0x5EA), (0x622, 0x64A), (0x904, 0x939), (0x958, 0x97F), (0x985, 0x9B9),
               (0x9DC, 0x9DF), (0xB05, 0xB39), (0xB85, 0xBB9), (0xBC6, 0xBD7), (0xF40, 0xF6C), (0x1025, 0x102E),
               (0x1B05, 0x1B35), (0x3041, 0x30FF), (0xF900, 0xFAD9), (0x2F800, 0x2FA1D), (0x2126, 0x212B),
               (0x1D15E, 0x1D164))
MARKS = ranges((0x300, 0x36F), (0x1DC0, 0x1DF5), (0x20D0, 0x20F0), (0x591, 0x5C7), (0x610, 0x61A), (0x64B, 0x65F),
               (0x670, 0x670), (0x93C, 0x94D), (0x951, 0x954), (0x9BC, 0x9D7), (0xB3C, 0xB57), (0xBBE, 0xBCD),
               (0xF71, 0xF84), (0x102E, 0x1039), (0x1B34, 0x1B44), (0x3099, 0x309A), (0x1D165, 0x1D16D))
HANGUL = ranges((0xAC00, 0xD7A3), (0x1100, 0x1112), (0x1161, 0x1175), (0x11A7, 0x11C2), (0x1113, 0x11FF))


def generated_texts(n=4000, seed=11):
    """Clusters of a base and 0-4 marks in random order, Hangul syllables and jamo runs (L V T,
    some broken), and text already in NFD, mixed with ASCII."""
    rng = random.Random(seed)
    jamo = [(0x1100, 0x1112), (0x1161, 0x1175), (0x11A7, 0x11C2)]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.5:
                parts.append(chr(rng.choice(BASES)) + "".join(chr(rng.choice(MARKS)) for _ in range(rng.randint(0, 4))))
            elif r < 0.7:
                parts.append("".join(chr(rng.randint(*jamo[k])) for k in range(rng.randint(1, 3))))
            elif r < 0.8:
                parts.append(chr(rng.choice(HANGUL)))
            elif r < 0.9:
                parts.append(unicodedata.normalize("NFD", chr(rng.choice(BASES))))
            else:
                parts.append(rng.choice([" ", "x", "ab", "\u0301", ", "]))
        out.append("".join(parts))
    return out


def test_nfc_nfd_match_unicodedata_on_generated_text():
    texts = generated_texts()
    for form in ("NFC", "NFD"):
        ours = run(None, form.lower(), texts)
        bad = [(t, o) for t, o in zip(texts, ours) if o != unicodedata.normalize(form, t)]
        assert not bad, (f"{form}: {len(bad)} of {len(texts)} differ from unicodedata "
                         f"{unicodedata.unidata_version}, first: {bad[0]!r}")
        changed = sum(o != t for t, o in zip(texts, ours))
        assert changed > len(texts) // 2, f"{form}: only {changed} texts changed; the generator lost its teeth"
    tok_nfc = normalizers.NFC()
    assert run(None, "nfc", texts) == [tok_nfc.normalize_str(t) for t in texts]


def test_nfc_fast_path_and_errors():
    below = "".join(chr(c) for c in range(0x20, 0x300))
    assert run(None, "nfc", [below, "", "plain"]) == [below, "", "plain"]
    assert run(None, "nfd", ["\u00c5"]) == ["A\u030a"]
    out = subprocess.run([str(EXE), "nfc"], input="[\"x\"", capture_output=True, text=True)
    assert out.returncode == 1 and "svdq-tokenize:" in out.stderr
