"""docqa.rerank with a tiny randomly initialised cross-encoder built in the test (no download)."""

import pytest

from docqa.documents import Hit
from docqa.errors import ModelError
from docqa.rerank import CrossEncoderReranker

WORDS = "how do i sort a list in reverse order tar extract archive files python venv create the of to".split()


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    d = tmp_path_factory.mktemp("tiny-ce")
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(vocab))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=1,
        initializer_range=0.5,
    )
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


def _hits(texts):
    return [Hit(chunk_id=i, score=1.0 / (i + 1), source=f"d{i}.txt", text=t, rank=i + 1) for i, t in enumerate(texts)]


def test_order_follows_model_scores(tiny_cross_encoder):
    import torch

    path, model, tok = tiny_cross_encoder
    query = "how do i sort a list"
    texts = [
        "sort a list in reverse order",
        "tar extract archive files",
        "python venv create",
        "the list of files",
        "reverse the order of the archive",
    ]
    with torch.no_grad():
        enc = tok([query] * len(texts), texts, padding=True, return_tensors="pt")
        expected = model(**enc).logits[:, 0].tolist()
    assert len({round(x, 6) for x in expected}) == len(texts)  # distinct, so the order is well defined

    rr = CrossEncoderReranker(str(path), "cpu")
    out = rr.rerank(query, _hits(texts))
    assert [h.text for h in out] == [texts[i] for i in sorted(range(len(texts)), key=lambda i: -expected[i])]
    assert [h.rank for h in out] == list(range(1, len(texts) + 1))
    assert all(h.score == h.scores["rerank"] for h in out)
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)
    assert rr.rerank(query, []) == []


def test_retriever_uses_reranker(tiny_cross_encoder, docs_dir, tmp_path, embedder):
    from docqa.config import Settings
    from docqa.ingest import ingest
    from docqa.retrieve import open_retriever

    path, *_ = tiny_cross_encoder
    s = Settings(index=tmp_path / "kb", file_timeout=30)
    ingest([docs_dir], s, embedder=embedder)
    r = open_retriever(s.replace(reranker=str(path)))
    try:
        hits = r.search("How do I create a virtual environment?", k=2)
    finally:
        r.kb.close()
    assert len(hits) == 2 and all("rerank" in h.scores for h in hits)
    assert hits[0].scores["rerank"] >= hits[1].scores["rerank"] and "rerank" in hits.timings


def test_missing_model_is_a_model_error(tmp_path):
    rr = CrossEncoderReranker(str(tmp_path / "nope"), "cpu")
    with pytest.raises(ModelError, match="cannot load reranker"):
        rr.rerank("q", _hits(["a"]))
