from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest

from moderation.classifier.artifacts import ArtifactRefused, artifact_digest
from moderation.classifier.embedding import load_embedder
from moderation.classifier.fast import store, training
from moderation.classifier.fast.calibration import fit_platt, prior_offsets, shift
from moderation.classifier.fast.config import DEFAULT_CONFIG, FastModelConfig
from moderation.classifier.fast.features import semantic_inputs
from moderation.classifier.fast.lexicon import (
    SELF_HARM_SIGNAL,
    SIGNAL_NEAR,
    SIGNAL_SAME_POST,
    self_harm_signal,
    sexual_minors_signal,
)
from moderation.classifier.fast.model import FastModel
from moderation.classifier.fast.store import ensure_fast_model
from moderation.classifier.fast.training import PRIOR_SHIFT_GRID, strongest_tie, train_fast_model
from moderation.evaluation.scores import measure_throughput
from moderation.settings import ModelStoreSettings, Settings, StackSettings, ThresholdSettings
from moderation.taxonomy import CATEGORIES, Category

SAFE_TEMPLATES = [
    "lovely {time} at the {place} with my {who}",
    "just made {food} for dinner, turned out great",
    "anyone know a good {place} near the station?",
    "happy birthday to my {who}, have a wonderful {time}",
    "finished reading a book about {place}s on a quiet {time}",
]
SPAM_TEMPLATES = [
    "WIN a FREE {prize} now!!! call 0800{n} to claim your cash reward",
    "URGENT you have won {prize}, text CLAIM to {n} before midnight",
    "cheap {prize} deal, click http://bit.ly/{n} limited offer, act now",
    "congratulations! your number {n} won a {prize}, reply YES to collect",
]
HARASSMENT_TEMPLATES = [
    "you are a pathetic worthless idiot, {who}",
    "shut up {who}, nobody wants you here, loser",
    "{who} is so stupid and ugly, what a moron",
    "go away you disgusting clown {who}",
]
WORDS = {
    "time": ["morning", "evening", "weekend", "day", "afternoon"],
    "place": ["park", "beach", "library", "cafe", "market", "museum"],
    "who": ["dog", "sister", "friend", "neighbour", "dad", "team"],
    "food": ["lasagna", "soup", "curry", "tacos", "bread"],
    "prize": ["iPhone", "holiday", "voucher", "laptop", "car"],
}


def synthetic(count: int, seed: int) -> list[dict[str, str]]:
    """`count` posts per category for safe, spam and harassment, varied by a seeded generator."""
    rng = random.Random(seed)
    records: list[dict[str, str]] = []
    for label, templates in (
        (Category.SAFE, SAFE_TEMPLATES),
        (Category.SPAM, SPAM_TEMPLATES),
        (Category.HARASSMENT, HARASSMENT_TEMPLATES),
    ):
        for _ in range(count):
            fields = {key: rng.choice(values) for key, values in WORDS.items()}
            text = rng.choice(templates).format(n=rng.randint(1000, 99999), **fields)
            records.append({"text": text, "label": label.value})
    return records


@pytest.fixture(scope="module")
def model() -> FastModel:
    return train_fast_model(synthetic(40, seed=1), synthetic(10, seed=2), progress=False)


def test_trains_in_seconds_and_reports_validation_metrics() -> None:
    started = time.monotonic()
    trained = train_fast_model(synthetic(40, seed=3), synthetic(10, seed=4), progress=False)
    assert time.monotonic() - started < 20
    assert re.fullmatch(r"fast-\d{8}-[0-9a-f]{10}", trained.version)
    assert trained.metrics["split"] == "validation"
    assert trained.metrics["posts"] == 30
    assert trained.metrics["flagged"]["auprc"] > 0.9
    assert trained.trained_categories == (Category.SAFE, Category.SPAM, Category.HARASSMENT)
    assert trained.policy_version == "v1"


def test_probabilities_have_the_taxonomy_columns(model: FastModel) -> None:
    texts = ["a quiet afternoon at the museum", "you moron", "FREE voucher call 080012345"]
    probabilities = model.predict_proba(texts)
    assert probabilities.shape == (3, len(CATEGORIES))
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    # Categories without training data stay at exactly 0.
    for category in (Category.HATE, Category.VIOLENCE, Category.SELF_HARM, Category.ILLICIT):
        assert (probabilities[:, CATEGORIES.index(category)] == 0).all()
    assert model.predict_proba([]).shape == (0, len(CATEGORIES))


def test_clear_spam_scores_spam_highest(model: FastModel) -> None:
    row = model.predict_proba(["URGENT!!! you won a FREE car, text CLAIM to 80123 now"])[0]
    assert CATEGORIES[int(row.argmax())] is Category.SPAM
    assert row[CATEGORIES.index(Category.SPAM)] > 0.5
    safe = model.predict_proba(["lovely evening at the beach with my sister"])[0]
    assert CATEGORIES[int(safe.argmax())] is Category.SAFE


def test_save_and_load_give_identical_predictions(model: FastModel, tmp_path: Path) -> None:
    path = model.save(tmp_path)
    assert path == tmp_path / model.version
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata["version"] == model.version
    assert metadata["categories"] == [c.value for c in CATEGORIES]
    assert model.save(tmp_path) == path  # saving the same version again keeps the artifact
    assert [p.name for p in tmp_path.iterdir()] == [model.version]  # no staging left behind
    loaded = FastModel.load(path)
    texts = [r["text"] for r in synthetic(5, seed=9)] + ["mixed 123 ünïcödé \x00 text"]
    np.testing.assert_array_equal(loaded.predict_proba(texts), model.predict_proba(texts))
    assert (loaded.version, loaded.policy_version) == (model.version, model.policy_version)
    assert loaded.metrics == model.metrics


def test_load_refuses_a_foreign_artifact(model: FastModel, tmp_path: Path) -> None:
    path = model.save(tmp_path)
    metadata = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text(json.dumps({**metadata, "format": 99}))
    with pytest.raises(ValueError, match="of format 99"):
        FastModel.load(path)


class _Payload:
    """Unpickling it would create `marker` (what a hostile artifact would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))


def test_the_artifact_is_plain_arrays(model: FastModel, tmp_path: Path) -> None:
    path = model.save(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "model.npz"]
    with np.load(path / "model.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == [
            "idf",
            "intercepts",
            "platt",
            "semantic_intercepts",
            "semantic_platt",
            "semantic_weights",
            "vocabulary",
            "weights",
        ]
        assert archive["vocabulary"].dtype.kind == "U"  # fixed-width text, not objects
    loaded = FastModel.load(path)
    assert loaded.vocabulary == model.vocabulary and "lovely" in loaded.vocabulary
    assert loaded.training_length == model.training_length and model.training_length


def test_a_format_1_pickle_artifact_is_refused_unread(model: FastModel, tmp_path: Path) -> None:
    import pickle

    path = model.save(tmp_path)
    marker = tmp_path / "unpickled"
    (path / "model.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    metadata = json.loads((path / "metadata.json").read_text())
    metadata |= {"format": 1, "files": {"model": "model.joblib"}}
    (path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ArtifactRefused, match="format 1 was a pickle") as refused:
        FastModel.load(path)
    assert refused.value.reason == "format"
    assert not marker.exists()


def test_a_pickle_inside_the_archive_is_never_run(model: FastModel, tmp_path: Path) -> None:
    path = model.save(tmp_path)
    marker = tmp_path / "unpickled"
    np.savez_compressed(path / "model.npz", idf=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        FastModel.load(path)
    assert not marker.exists()


def test_load_with_a_digest_refuses_other_files(model: FastModel, tmp_path: Path) -> None:
    path = model.save(tmp_path)
    digest = artifact_digest(path)
    assert FastModel.load(path, sha256=digest).version == model.version
    metadata = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text(json.dumps({**metadata, "policy_version": "v0"}))
    with pytest.raises(ArtifactRefused, match="is not the registered") as refused:
        FastModel.load(path, sha256=digest)
    assert refused.value.reason == "digest"


def test_batching_does_not_change_predictions(model: FastModel) -> None:
    texts = [r["text"] for r in synthetic(20, seed=5)]
    whole = model.predict_proba(texts)
    one_by_one = np.vstack([model.predict_proba([text]) for text in texts])
    np.testing.assert_allclose(whole, one_by_one, rtol=1e-5)


def test_measure_throughput_counts_posts_per_second(model: FastModel) -> None:
    texts = [r["text"] for r in synthetic(50, seed=6)]
    assert measure_throughput(model, texts, min_seconds=0.05) > 100
    with pytest.raises(ValueError):
        measure_throughput(model, [])


def test_platt_scaling_recovers_a_known_sigmoid() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20_000)
    labels = rng.random(20_000) < 1 / (1 + np.exp(-(2.0 * scores - 0.5)))
    a, b = fit_platt(scores, labels)
    assert a == pytest.approx(2.0, abs=0.1)
    assert b == pytest.approx(-0.5, abs=0.1)


# The lexicon is tested with non-explicit phrases only.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Please report any sexual content involving a child to the police", SIGNAL_NEAR),
        ("a 14-year-old was shown explicit material, the school said", SIGNAL_NEAR),
        ("Minors must never be sent nudes; report it", SIGNAL_NEAR),
        ("Took the kids to the zoo today", 0.0),
        ("Sexual health clinic opens on Monday", 0.0),
        ("My baby sister turned 30 today", 0.0),
        ("Our teenager started driving lessons", 0.0),
    ],
)
def test_sexual_minors_signal(text: str, expected: float) -> None:
    assert sexual_minors_signal(text) == expected


def test_sexual_minors_signal_is_weaker_when_terms_are_far_apart() -> None:
    text = "The children sang at the concert. " + "It rained all day long. " * 3 + "Sex ed."
    assert sexual_minors_signal(text) == SIGNAL_SAME_POST
    # Review floor 0.30 < signal < remove threshold 0.85: the lexicon alone never removes.
    assert 0.3 < SIGNAL_SAME_POST < SIGNAL_NEAR < 0.85


def test_sexual_minors_column_carries_the_signal(model: FastModel) -> None:
    column = CATEGORIES.index(Category.SEXUAL_MINORS)
    flagged, plain = model.predict_proba(
        ["report sexual content involving a child", "the kids loved the park"]
    )
    assert flagged[column] == SIGNAL_NEAR
    assert plain[column] == 0.0


def test_ensure_fast_model_trains_once_then_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset_dir = tmp_path / "dataset"
    dataset_dir.mkdir()
    for split, seed in (("train", 7), ("validation", 8)):
        records = synthetic(12 if split == "train" else 4, seed=seed)
        lines = [json.dumps(record) for record in records]
        (dataset_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    builds: list[Path] = []

    def fake_build(cache_dir: Path) -> Path:
        builds.append(cache_dir)
        return dataset_dir

    monkeypatch.setattr(store, "build_dataset", fake_build)
    monkeypatch.setattr(store, "dataset_fingerprint", lambda: "fingerprint-1")
    settings = Settings(
        models=ModelStoreSettings(artifact_dir=tmp_path / "models"),
        stack=StackSettings(cache_dir=tmp_path / "cache"),
    )
    first = ensure_fast_model(settings, progress=False)
    assert builds == [tmp_path / "cache"]
    assert (tmp_path / "models" / "fast" / first.version / "metadata.json").is_file()
    second = ensure_fast_model(settings, progress=False)
    assert builds == [tmp_path / "cache"]  # loaded, not rebuilt or retrained
    assert second.version == first.version
    assert second.dataset_fingerprint == "fingerprint-1"
    # A new dataset fingerprint means a new model.
    monkeypatch.setattr(store, "dataset_fingerprint", lambda: "fingerprint-2")
    ensure_fast_model(settings, progress=False)
    assert len(builds) == 2
    assert store.find_artifact(
        tmp_path / "models" / "fast",
        dataset_fingerprint="fingerprint-1",
        config_fingerprint=DEFAULT_CONFIG.fingerprint(),
        policy_version="v1",
    ) == (tmp_path / "models" / "fast" / first.version)
    # A fresh checkout (an empty artifact directory) loads the copy kept in the cache.
    monkeypatch.setattr(store, "dataset_fingerprint", lambda: "fingerprint-1")
    fresh = settings.model_copy(
        update={"models": ModelStoreSettings(artifact_dir=tmp_path / "fresh-checkout")}
    )
    again = ensure_fast_model(fresh, progress=False)
    assert len(builds) == 2  # not rebuilt, not retrained
    assert again.version == first.version
    assert (tmp_path / "fresh-checkout" / "fast" / first.version / "metadata.json").is_file()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I don't want to be here anymore", SELF_HARM_SIGNAL),
        ("I've been feeling suicidal lately", SELF_HARM_SIGNAL),
        ("sometimes I think about ending it all", SELF_HARM_SIGNAL),
        ("Suicide prevention training at work was really useful", 0.0),
        ("I hurt myself playing football", 0.0),
        ("this diet is killing me", 0.0),
    ],
)
def test_self_harm_signal(text: str, expected: float) -> None:
    assert self_harm_signal(text) == expected
    assert 0.3 < SELF_HARM_SIGNAL < 0.85


def test_self_harm_column_is_at_least_the_signal(model: FastModel) -> None:
    column = CATEGORIES.index(Category.SELF_HARM)
    intent, plain = model.predict_proba(["I want to end my life", "a lovely day at the park"])
    # The synthetic model has no self_harm data, so the column is the signal alone.
    assert (intent[column], plain[column]) == (SELF_HARM_SIGNAL, 0.0)


def test_the_semantic_head_is_saved_with_the_embedding_it_was_trained_on(
    model: FastModel, tmp_path: Path
) -> None:
    assert model.semantic is not None
    path = model.save(tmp_path)
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata["embedding"] == {
        "name": model.config.embedding,
        "sha256": load_embedder().digest,
    }
    with np.load(path / "model.npz", allow_pickle=False) as archive:
        # The embedding's dimensions, then the offensive-language score (`offensive.py`).
        assert archive["semantic_weights"].shape == (load_embedder().dim + 1, 3)


def test_a_model_trained_on_another_embedding_refuses_to_score(
    model: FastModel, tmp_path: Path
) -> None:
    path = model.save(tmp_path)
    metadata_path = path / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["embedding"]["sha256"] = "0" * 64
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="trained on embedding 000000000000"):
        FastModel.load(path).predict_proba(["hello"])


def test_the_semantic_head_carries_meaning_the_ngrams_never_saw(model: FastModel) -> None:
    # Insults whose key words ("dumb", "fool", "hates") are in no template: the head trained on
    # 40 posts per category still places them nearer harassment than safe.
    unseen = ["you are a dumb fool and everybody hates you", "you are an ugly fool"]
    assert model.semantic is not None
    vectors = semantic_inputs(model.embedder(), unseen, model.config)
    scores = model.semantic.scores(vectors)
    harassment = model.trained_categories.index(Category.HARASSMENT)
    safe = model.trained_categories.index(Category.SAFE)
    assert (scores[:, harassment] > scores[:, safe]).all()


def test_an_ngram_only_configuration_trains_without_the_embedding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training, "DEFAULT_CONFIG", FastModelConfig(embedding=""))
    plain = train_fast_model(synthetic(20, seed=3), [], progress=False)
    assert plain.semantic is None
    assert plain.config.offensive  # unused without the semantic head it belongs to
    assert plain.metadata()["embedding"] is None
    assert plain.predict_proba(["WIN a FREE car now"]).shape == (1, len(CATEGORIES))


def test_thresholds_for_the_error_budget_are_chosen_on_validation_and_saved(
    model: FastModel, tmp_path: Path
) -> None:
    assert model.chosen_thresholds is not None
    assert model.chosen_thresholds["posts"] == 30  # the validation split: 10 per category
    assert model.error_budget_thresholds is not None
    assert model.error_budget_thresholds.allow >= Settings().thresholds.allow
    # Chosen from the defaults, whatever the training process was configured with: the artifact
    # is shared, and its version does not name thresholds.
    assert model.chosen_thresholds["configured_thresholds"] == ThresholdSettings().model_dump(
        mode="json"
    )
    loaded = FastModel.load(model.save(tmp_path))
    assert loaded.chosen_thresholds == model.chosen_thresholds
    assert loaded.error_budget_thresholds == model.error_budget_thresholds


def test_the_prior_shift_moves_each_column_toward_an_even_prior() -> None:
    shares = np.array([0.7, 0.2, 0.1])
    assert np.allclose(prior_offsets(shares, 0.0), 0.0)
    full = prior_offsets(shares, 1.0)
    # At full strength a probability equal to the column's training share becomes 0.5.
    shifted = shift(shares[None, :], full)
    assert np.allclose(shifted, 0.5)
    # Half-way: the majority column goes down, the minority ones up, each still in order.
    half = prior_offsets(shares, 0.5)
    assert half[0] < 0 < half[1] < half[2]
    column = np.array([[0.05, 0.05, 0.05], [0.5, 0.5, 0.5], [0.95, 0.95, 0.95]])
    moved = shift(column, half)
    assert (np.diff(moved, axis=0) > 0).all()
    # The argmax of a post the calibrated model calls 60 % safe, 35 % violence changes.
    post = np.array([[0.6, 0.01, 0.35]])
    assert post.argmax() == 0 and shift(post, half).argmax() == 2


def test_the_prior_shift_is_chosen_on_validation_and_saved(
    model: FastModel, tmp_path: Path
) -> None:
    assert model.prior_shift in PRIOR_SHIFT_GRID
    path = model.save(tmp_path)
    metadata = json.loads((path / "metadata.json").read_text())
    assert metadata["prior_shift"] == model.prior_shift
    assert FastModel.load(path).prior_shift == model.prior_shift
    # An artifact from before the shift predicts as it always did (strength 0).
    del metadata["prior_shift"]
    (path / "metadata.json").write_text(json.dumps(metadata))
    old = FastModel.load(path)
    texts = ["you moron", "lovely evening at the beach"]
    assert old.prior_shift == 0.0
    learned = old.learned_proba(texts)
    np.testing.assert_allclose(old.predict_proba(texts)[:, list(old._columns)], learned)


def test_among_strengths_validation_cannot_tell_apart_the_strongest_wins() -> None:
    assert strongest_tie({0.0: 0.70, 0.15: 0.774, 0.3: 0.769, 0.4: 0.772, 0.5: 0.756}) == 0.4
    assert strongest_tie({0.0: 0.80, 0.1: 0.70}) == 0.0  # a clear best stays the best
    assert strongest_tie({0.0: 0.5}) == 0.0


def test_without_the_offensive_score_the_semantic_head_reads_the_embedding_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(training, "DEFAULT_CONFIG", FastModelConfig(offensive=""))
    trained = train_fast_model(synthetic(20, seed=3), [], progress=False)
    assert trained.semantic is not None
    assert trained.semantic.weights.shape == (load_embedder().dim, 3)
    assert trained.config.fingerprint() != FastModelConfig().fingerprint()
    assert trained.predict_proba(["WIN a FREE car now"]).shape == (1, len(CATEGORIES))
