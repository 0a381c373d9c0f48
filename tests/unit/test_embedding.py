"""The static embedding of stage 1: pinned files, unit vectors, meaning over spelling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moderation.classifier import embedding
from moderation.classifier.embedding import (
    EMBED_CHARS,
    EmbedderUnavailable,
    load_embedder,
)


def test_vectors_are_unit_norm_and_deterministic() -> None:
    embedder = load_embedder()
    texts = ["I will hurt you", "", "ünïcödé 日本語 العربية \x00", "a" * 50_000]
    first = embedder.embed(texts)
    assert first.shape == (4, embedder.dim)
    norms = np.linalg.norm(first, axis=1)
    np.testing.assert_allclose(norms[[0, 2, 3]], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first, embedder.embed(texts))
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_a_paraphrase_is_nearer_the_threat_than_the_harmless_lookalike() -> None:
    embedder = load_embedder()
    threat, paraphrase, lookalike, unrelated = embedder.embed(
        [
            "I am going to shoot everyone at my school tomorrow",
            "tomorrow I will kill all the students in my class with a gun",
            "I am going to shop with everyone at my school tomorrow",
            "the farmers market opens at nine on saturdays",
        ]
    )
    assert float(threat @ paraphrase) > 0.5
    # The paraphrase shares almost no words with the threat, yet reads nearer to it than to
    # the lookalike that differs from the threat by one word.
    assert float(paraphrase @ threat) > float(paraphrase @ lookalike) + 0.1
    assert float(threat @ paraphrase) > float(threat @ unrelated) + 0.4


def test_long_texts_are_embedded_from_their_head_and_tail() -> None:
    embedder = load_embedder()
    head, tail = "violent threat " * 200, "kind words " * 200
    long_text = head + "filler " * 5_000 + tail
    assert len(long_text) > EMBED_CHARS
    clipped = embedding._clip(long_text)
    assert len(clipped) == EMBED_CHARS + 1
    assert clipped.startswith(head[: EMBED_CHARS // 2]) and clipped.endswith(tail[-10:])
    np.testing.assert_array_equal(embedder.embed([long_text]), embedder.embed([clipped]))


def test_files_that_do_not_match_the_pins_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "wordllama"
    (fake / "weights").mkdir(parents=True)
    (fake / "tokenizers").mkdir()
    (fake / "weights" / "l2_supercat_256.safetensors").write_bytes(b"not the weights")
    (fake / "tokenizers" / "l2_supercat_tokenizer_config.json").write_text("{}")
    monkeypatch.setattr(embedding, "_package_dir", lambda: fake)
    load_embedder.cache_clear()
    try:
        with pytest.raises(EmbedderUnavailable, match="not the one pinned"):
            load_embedder()
    finally:
        load_embedder.cache_clear()


def test_a_missing_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(embedding, "_package_dir", lambda: tmp_path)
    load_embedder.cache_clear()
    try:
        with pytest.raises(EmbedderUnavailable, match="cannot read"):
            load_embedder()
    finally:
        load_embedder.cache_clear()


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from([*"ab kZ,.!?'-\n\t0 9é日本ال😀\u200b", "  ", "don't", "the", " Ѕ"]),
            max_size=25,
        ).map("".join),
        min_size=1,
        max_size=5,
    )
)
def test_cached_word_pieces_give_exactly_the_tokenizers_ids(texts: list[str]) -> None:
    embedder = load_embedder()
    expected = [
        embedder.tokenizer.encode(text.strip(" "), add_special_tokens=False).ids for text in texts
    ]
    assert embedder.token_ids(texts) == expected
    assert embedder.token_ids(texts) == expected  # again, from the cache


def test_the_word_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = load_embedder()
    monkeypatch.setattr(embedding, "CACHE_WORDS", 50)
    embedder.token_ids([" ".join(f"word{i}x{j}" for j in range(30)) for i in range(5)])
    assert len(embedder._pieces) <= 50
