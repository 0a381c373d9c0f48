"""The model registry: versions per kind, idempotent on kind + version, one champion per kind."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_jsonable_python
from sqlmodel import Session, col, select

from moderation.db.models import ModelStatus, ModelVersion


def _retire_champions(session: Session, *, kind: str, keep: int | None) -> None:
    champions = session.exec(
        select(ModelVersion).where(
            ModelVersion.kind == kind, ModelVersion.status == ModelStatus.CHAMPION
        )
    ).all()
    for champion in champions:
        if champion.id != keep:
            champion.status = ModelStatus.RETIRED
            session.add(champion)


def register_model_version(
    session: Session,
    *,
    kind: str,
    version: str,
    artifact_uri: str,
    metrics: dict[str, Any],
    status: ModelStatus = ModelStatus.CHALLENGER,
    artifact_sha256: str | None = None,
) -> ModelVersion:
    """Register a model version (idempotent on kind + version: a known one is returned as is).

    With status `champion` the version is promoted (registered before or not) and the previous
    champion of the same kind is retired, in one transaction. `artifact_sha256` is the digest
    loaders check (`classifier.artifacts`); it fills in a known version's missing digest (a row
    registered before digests existed) but never replaces one.
    """
    model = session.exec(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    ).first()
    if model is None:
        model = ModelVersion(
            kind=kind,
            version=version,
            artifact_uri=artifact_uri,
            artifact_sha256=artifact_sha256,
            metrics=to_jsonable_python(metrics),
            status=status,
        )
        session.add(model)
        session.flush()
    else:
        if status is ModelStatus.CHAMPION:
            model.status = status
        if model.artifact_sha256 is None and artifact_sha256 is not None:
            model.artifact_sha256 = artifact_sha256
        session.add(model)
    if status is ModelStatus.CHAMPION:
        _retire_champions(session, kind=kind, keep=model.id)
    session.commit()
    session.refresh(model)
    return model


def promote_model_version(session: Session, *, kind: str, version: str) -> ModelVersion:
    """Make a registered version the champion of its kind (the previous one is retired).

    Raises:
        LookupError: when the version is not registered.
    """
    model = session.exec(
        select(ModelVersion).where(ModelVersion.kind == kind, ModelVersion.version == version)
    ).first()
    if model is None:
        raise LookupError(f"model {kind} {version} is not registered")
    return register_model_version(
        session,
        kind=kind,
        version=version,
        artifact_uri=model.artifact_uri,
        metrics=model.metrics,
        status=ModelStatus.CHAMPION,
        artifact_sha256=model.artifact_sha256,
    )


def get_champion(session: Session, *, kind: str) -> ModelVersion | None:
    """The current champion of `kind`, or None."""
    return session.exec(
        select(ModelVersion)
        .where(ModelVersion.kind == kind, ModelVersion.status == ModelStatus.CHAMPION)
        .order_by(col(ModelVersion.created_at).desc())
    ).first()
