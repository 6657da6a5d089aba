"""Our byte-level BPE against Hugging Face `tokenizers`, configured from the same GGUF
vocabulary, merges and SmolLM2's pre-tokenizer (digits split one by one, then the
GPT-2 byte-level split), on the shared corpus; and decode(encode(s)) == s."""
import pytest
from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from corpus import corpus


@pytest.fixture(scope="module")
def hf_tokenizer(model_path):
    r = GGUFReader(str(model_path))
    f = r.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.tokens"].data]
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    merges = [tuple(bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8").split(" "))
              for i in f["tokenizer.ggml.merges"].data]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    return tok


def test_ids_equal_hugging_face_tokenizers(probe, hf_tokenizer):
    texts = corpus()
    assert len(texts) >= 300
    ours = probe("tokenize", stdin=texts)
    mismatches = [(t, o, hf_tokenizer.encode(t).ids) for t, o in zip(texts, ours) if o != hf_tokenizer.encode(t).ids]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, first: {mismatches[0]!r}"


def test_decode_of_encode_is_identity(probe):
    texts = [t for t in corpus() if "<|" not in t]  # special tokens are skipped when streaming text
    ids = probe("tokenize", stdin=texts)
    assert probe("detokenize", stdin=ids) == texts
