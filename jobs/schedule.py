"""The local schedule of the nightly job: the Dapr Jobs API, through daprd and the scheduler.

`make stack-up` registers the job `nightly` (`settings.nightly.schedule`, a 6-field cron with
seconds first) with the sidecar of the review service, the stack's Dapr app. The scheduler keeps
it in its embedded etcd (under `.stack/`), so it survives restarts. When it fires, daprd calls
the app at `POST /job/nightly`; the review service answers at once and starts
`moderation nightly` as a child process. Runs never overlap: the nightly holds a lock (see
`jobs.nightly.exclusive_run`), so a trigger that arrives during a run records a skipped run.
In Kubernetes the CronJob in `k8s/` replaces all of this.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException

from moderation.db.roles import SERVICE_ROLES
from moderation.services.sidecar.tokens import api_token_headers
from moderation.settings import PROJECT_ROOT, Settings

logger = logging.getLogger(__name__)

JOB_NAME = "nightly"
JOBS_API = "v1.0-alpha1/jobs"


def schedule_nightly(
    settings: Settings, *, name: str = JOB_NAME, due_time: str | None = None
) -> dict[str, Any]:
    """Register (or replace) the nightly job with daprd; returns the request body sent.

    With `due_time` (for example "2s") the job fires once after that delay instead of on the
    configured schedule.
    """
    body: dict[str, Any] = {"data": {"job": JOB_NAME}, "overwrite": True}
    if due_time is not None:
        body["dueTime"] = due_time
    else:
        body["schedule"] = settings.nightly.schedule
    response = httpx.post(
        f"{settings.dapr.http_endpoint}/{JOBS_API}/{name}",
        json=body,
        headers=api_token_headers(settings),
        timeout=10,
    )
    if response.status_code >= 300:
        raise RuntimeError(
            f"daprd refused the job {name!r}: HTTP {response.status_code} {response.text[:300]}"
        )
    return body


def nightly_env(settings: Settings) -> dict[str, str]:
    """This process's environment, with the nightly's database role in place of a service's.

    The review service (which receives the trigger) logs in as `moderation_review`, which may not
    write the registry; the job it launches logs in as `moderation_nightly` (on the local stack
    every role has the same password; in Kubernetes the nightly is a CronJob with its own).
    """
    env = os.environ.copy()
    if settings.db.user in SERVICE_ROLES.values():
        env["MODERATION_DB__USER"] = SERVICE_ROLES["nightly"]
    return env


def launch_nightly(settings: Settings) -> subprocess.Popen[bytes]:
    """Start `moderation nightly` as a child process with this process's environment.

    Its output goes to `nightly.log` in the nightly output directory; a thread reaps it.
    """
    log_path = settings.nightly.output_dir / "nightly.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "moderation.cli", "nightly"],
            cwd=PROJECT_ROOT,
            env=nightly_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    threading.Thread(target=child.wait, name="nightly-reaper", daemon=True).start()
    logger.info("nightly job started (pid %d), log: %s", child.pid, log_path)
    return child


def job_router(settings: Settings) -> APIRouter:
    """`POST /job/{name}`: where daprd delivers the triggers of the jobs this app scheduled."""
    router = APIRouter()

    @router.post("/job/{name}")
    def triggered(name: str) -> dict[str, Any]:
        if name != JOB_NAME and not name.startswith(f"{JOB_NAME}-"):
            raise HTTPException(status_code=404, detail=f"no job handler for {name!r}")
        child = launch_nightly(settings)
        return {"job": name, "pid": child.pid}

    return router
