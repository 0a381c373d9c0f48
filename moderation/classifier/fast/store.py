"""The fast-model artifact store: the model a process serves, found or trained on first use.

Artifacts live in `settings.models.artifact_dir / "fast"`, one directory per version. One is
reused when it was trained from the current dataset build with the current configuration and
policy; otherwise the dataset is built (cached) and a model is trained and saved. A copy of each
trained artifact is kept in the cache (`<cache>/fast-model-artifacts/`): a fresh checkout, or a
test with an artifact directory of its own, loads it from there instead of training again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from moderation.cache import console, copy_entry, newest_artifact
from moderation.classifier.fast.config import DEFAULT_CONFIG
from moderation.classifier.fast.model import ARTIFACT_FORMAT, METADATA_FILE, MODEL_FILE, FastModel
from moderation.classifier.fast.training import train_fast_model
from moderation.datasets.build import build_dataset, dataset_fingerprint, load_split
from moderation.settings import Settings

logger = logging.getLogger(__name__)
# Trained artifacts, kept under the cache directory so that a fresh checkout does not retrain.
CACHED_ARTIFACTS = "fast-model-artifacts"


def find_artifact(
    store: Path, *, dataset_fingerprint: str, config_fingerprint: str, policy_version: str
) -> Path | None:
    """The newest artifact in `store` trained from this dataset with this configuration."""
    return newest_artifact(
        store,
        "fast-*",
        metadata_file=METADATA_FILE,
        model_file=MODEL_FILE,
        wanted={
            "format": ARTIFACT_FORMAT,
            "dataset_fingerprint": dataset_fingerprint,
            "config_fingerprint": config_fingerprint,
            "policy_version": policy_version,
        },
    )


def ensure_fast_model(settings: Settings, *, progress: bool = True) -> FastModel:
    """The fast model for the current dataset and configuration, trained on first use.

    Looks in `settings.models.artifact_dir / "fast"`; when no artifact matches, builds the
    dataset (cached under `settings.stack.cache_dir`), trains with a progress bar, saves the
    artifact and returns the model. The gold split is never read here.
    """
    store = settings.models.artifact_dir / "fast"
    cached_store = settings.stack.cache_dir / CACHED_ARTIFACTS
    fingerprint = dataset_fingerprint()
    wanted = {
        "dataset_fingerprint": fingerprint,
        "config_fingerprint": DEFAULT_CONFIG.fingerprint(),
        "policy_version": settings.models.policy_version,
    }
    existing = find_artifact(store, **wanted)
    if existing is None and (cached := find_artifact(cached_store, **wanted)) is not None:
        existing = copy_entry(cached, store)
    if existing is not None:
        copy_entry(existing, cached_store)  # no-op when the cache already holds it
        model = FastModel.load(existing)
        logger.info("loaded fast model %s from %s", model.version, existing)
        return model
    if progress:
        console.print("[dim]…[/dim] fast model: no artifact for this dataset yet, training it")
    dataset_dir = build_dataset(settings.stack.cache_dir)
    model = train_fast_model(
        load_split(dataset_dir, "train"),
        load_split(dataset_dir, "validation"),
        progress=progress,
        policy_version=settings.models.policy_version,
        dataset_fingerprint=fingerprint,
    )
    path = model.save(store)
    copy_entry(path, cached_store)
    if progress:
        console.print(
            f"[green]✓[/green] fast model {model.version} trained in "
            f"{model.training_seconds:.1f}s, saved to {path}"
        )
    return model
