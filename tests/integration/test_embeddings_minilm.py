"""all-MiniLM-L6-v2 on sentence-transformers (loads torch and the real model: seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emafusion.stores.embeddings import (
    CachedEmbedder,
    Embedder,
    MiniLMEmbedder,
    TextTooLongError,
)

pytestmark = pytest.mark.slow


def assert_unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.shape == (n, dim)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------ MiniLM


def test_importing_is_cheap() -> None:
    code = (
        "import sys, emafusion.stores.embeddings, emafusion.stores.memory\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "e = emafusion.stores.embeddings.MiniLMEmbedder()\n"
        "assert e.dim == 384 and e.id\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(batch_size=4)


def test_minilm_embeds_offline(minilm: MiniLMEmbedder) -> None:
    import os

    texts = [
        "How do I bake sourdough bread at home?",
        "What is a simple recipe for homemade sourdough?",
        "The central bank raised interest rates by half a point.",
        "",
        "Résumé: naïve café ☕",
    ]
    vectors = minilm.embed(texts)
    assert isinstance(minilm, Embedder)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert_unit_rows(vectors, len(texts), 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    # Batching must not change the vectors (beyond float noise).
    single = np.vstack([minilm.embed([t]) for t in texts[:3]])
    assert np.allclose(single, vectors[:3], atol=1e-5)


def test_minilm_truncation_is_explicit(minilm: MiniLMEmbedder) -> None:
    long_text = "routing " * 400
    assert minilm.count_tokens(["", "hello world", long_text]) == [2, 4, 402]
    assert minilm.overlong(["short", long_text]) == [1]
    before = minilm.truncated_count
    vectors = minilm.embed(["short", long_text, long_text + "tail words"])
    assert minilm.last_truncated == (1, 2)
    assert minilm.truncated_count == before + 2
    # Everything past the limit is cut, so only the first 254 word pieces matter.
    assert np.allclose(vectors[1], vectors[2], atol=1e-5)
    strict = MiniLMEmbedder(truncation="error", max_seq_length=128)
    with pytest.raises(TextTooLongError, match=r"indices \[0\].*truncation='truncate'"):
        strict.embed([long_text])


def test_minilm_id_tracks_weights_and_length(minilm: MiniLMEmbedder) -> None:
    fresh = MiniLMEmbedder()
    assert fresh.id == minilm.id
    assert fresh._model is None  # the id comes from the files, not from loading the model
    assert MiniLMEmbedder(max_seq_length=128).id != minilm.id
    assert minilm.id.startswith("all-MiniLM-L6-v2@")
    with pytest.raises(ValueError, match="max_seq_length"):
        MiniLMEmbedder(max_seq_length=512)


def test_minilm_through_the_cache(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    cached = CachedEmbedder(minilm, cache_dir=tmp_path)
    first = cached.embed(["what is 2 + 2?", "translate hello to French"])
    again = CachedEmbedder(minilm, cache_dir=tmp_path)
    assert np.array_equal(again.embed(["what is 2 + 2?"])[0], first[0])
    assert (again.hits, again.misses) == (1, 0)
