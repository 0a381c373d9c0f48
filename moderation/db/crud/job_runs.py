"""Job runs (started, finished, how), and the advisory lock that keeps a job's runs apart."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlmodel import Session, col, select

from moderation.db.models import JobRun
from moderation.events import utc_now


def start_job_run(session: Session, *, job: str, details: dict[str, Any] | None = None) -> JobRun:
    """Record that a job started (status `running`)."""
    run = JobRun(job=job, status="running", details=to_jsonable_python(details or {}))
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def finish_job_run(
    session: Session,
    *,
    run_id: int,
    status: str,
    counts: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> JobRun:
    """Record how a job ended (`succeeded` / `failed`), with its counts and details.

    Raises:
        LookupError: when there is no such run.
    """
    run = session.get(JobRun, run_id)
    if run is None:
        raise LookupError(f"no job run {run_id}")
    run.status = status
    run.finished_at = utc_now()
    if counts is not None:
        run.counts = to_jsonable_python(counts)
    if details is not None:
        run.details = {**run.details, **to_jsonable_python(details)}
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def list_job_runs(session: Session, *, job: str, status: str) -> list[JobRun]:
    """The runs of `job` with `status`, newest first."""
    return list(
        session.exec(
            select(JobRun)
            .where(JobRun.job == job, JobRun.status == status)
            .order_by(col(JobRun.id).desc())
        ).all()
    )


def try_advisory_lock(session: Session, *, key: int) -> bool:
    """Take the PostgreSQL session-level advisory lock `key`; False when another session holds it.

    The lock belongs to the database connection, not to a transaction: bind the session to a
    connection held for as long as the lock (`Session(connection)`). It lasts until
    `release_advisory_lock`, or until the connection closes, so a killed process never leaves
    it behind.
    """
    acquired = bool(
        session.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
    )
    session.commit()  # the lock is held by the connection, not by this transaction
    return acquired


def release_advisory_lock(session: Session, *, key: int) -> None:
    """Release the advisory lock `key` taken by `try_advisory_lock` on this connection."""
    session.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    session.commit()
