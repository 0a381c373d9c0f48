"""The LoRA part of the nightly job: export, fine-tune, evaluate, register with vLLM, promote.

`run_lora` turns the human decisions into chat SFT examples (`jobs.sft`), holds out the newest
`nightly.lora.held_out_fraction` of them, trains an adapter with `jobs.lora_train` in the training
venv (`moderation.devtools.stack.train_env`, a subprocess whose output is streamed), and compares
the new
adapter's eval loss with the current champion's (registry kind `agent-lora`) on the same held-out
examples, or with the base model's when there is none. A better adapter is loaded into vLLM
(`POST /v1/load_lora_adapter`; the server needs `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and
`--enable-lora`) and then recorded as champion; workers poll the registry and send the champion's
version as the model name. Otherwise it is recorded as a challenger.

The adapter's name is a hash of its training data and hyperparameters, so a rerun on the same
data finds the adapter already trained (same name, same directory) and duplicates nothing:
registration in the registry is idempotent and vLLM's "already loaded" counts as success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from sqlalchemy import Engine
from sqlmodel import Session

from jobs.sft import Example, sft_examples, write_jsonl
from moderation.cache import cache_entry, console, step
from moderation.classifier.artifacts import ArtifactRefused, artifact_digest, load_checked
from moderation.db import crud
from moderation.db.models import ModelStatus, ModelVersion
from moderation.devtools.stack.train_env import ensure_train_venv, local_base_model
from moderation.policy import load_policy
from moderation.services.worker.registry_watch import AGENT_LORA
from moderation.settings import PROJECT_ROOT, LoraSettings, Settings

logger = logging.getLogger(__name__)

KIND = AGENT_LORA
METRICS_FILE = "metrics.json"  # written by jobs.lora_train
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# peft falls back to a pickled `adapter_model.bin` (torch.load) when no safetensors file exists:
# an adapter directory holding a pickle is never handed to the trainer or to vLLM.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".joblib")
LOAD_PATH = "/v1/load_lora_adapter"
ALREADY_LOADED = "has already been loaded"  # vLLM's 400 for a name it serves already
# The trainer's own lines are kept for the error message when it fails.
TAIL_LINES = 30

Progress = Callable[[str], None]


class LoraError(RuntimeError):
    """Training or registration failed; the message says where and why."""


@dataclass(frozen=True)
class TrainingJob:
    """The arguments of one `jobs.lora_train` run."""

    base: str
    train: Path
    eval: Path
    output: Path
    current_adapter: str | None  # the champion's artifact_uri
    max_steps: int
    batch_size: int
    learning_rate: float
    rank: int
    alpha: int


Trainer = Callable[[TrainingJob], None]


@dataclass(frozen=True)
class LoraResult:
    """What the LoRA step did, for the job run record and the report."""

    adapter: str | None
    path: Path | None
    train_examples: int
    held_out_examples: int
    train_loss_first: float | None
    train_loss_last: float | None
    eval_loss: float | None
    eval_loss_current: float | None
    current: str | None  # the champion adapter compared against; None: the base model
    trained: bool  # False when the same data had produced this adapter already
    promoted: bool
    reason: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the job run's details)."""
        record = asdict(self)
        record["path"] = str(self.path) if self.path else None
        return record

    def render(self) -> str:
        """The report's Markdown section."""
        if self.adapter is None:
            return f"## Agent LoRA adapter\n\nNot trained: {self.reason}.\n"
        outcome = "promoted" if self.promoted else "not promoted"
        return "\n".join(
            [
                "## Agent LoRA adapter",
                "",
                f"- Adapter: `{self.adapter}` ({'trained' if self.trained else 'trained before'})"
                f" in `{self.path}`",
                f"- Examples: {self.train_examples:,} to train, {self.held_out_examples:,} newest "
                "held out",
                f"- Training loss: {_loss(self.train_loss_first)} → {_loss(self.train_loss_last)}",
                f"- Held-out loss: {_loss(self.eval_loss)} against {_loss(self.eval_loss_current)}"
                f" of {f'`{self.current}`' if self.current else 'the base model'}",
                f"- Decision: **{outcome}** — {self.reason}",
                f"- Time: {self.seconds:.0f} s",
                "",
            ]
        )


def _loss(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


# --- data ----------------------------------------------------------------------------------------


def split_by_time(
    examples: Sequence[Example], held_out_fraction: float
) -> tuple[list[Example], list[Example]]:
    """Oldest examples to train, the newest `held_out_fraction` (at least one) held out."""
    held_out = max(1, round(len(examples) * held_out_fraction))
    cut = len(examples) - held_out
    return list(examples[:cut]), list(examples[cut:])


def adapter_name(train: Path, held_out: Path, *, base: str, lora: LoraSettings) -> str:
    """Deterministic: the same data, base and hyperparameters give the same adapter name."""
    digest = hashlib.sha256()
    for part in (train.read_bytes(), held_out.read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    params = [base, lora.max_steps, lora.batch_size, lora.learning_rate, lora.rank, lora.alpha]
    digest.update(json.dumps(params).encode())
    return f"{KIND}-{digest.hexdigest()[:12]}"


# --- training ------------------------------------------------------------------------------------


def train_command(python: Path, job: TrainingJob) -> list[str]:
    argv = [
        str(python), "-m", "jobs.lora_train",
        "--base", job.base,
        "--train", str(job.train),
        "--eval", str(job.eval),
        "--output", str(job.output),
        "--max-steps", str(job.max_steps),
        "--batch-size", str(job.batch_size),
        "--learning-rate", str(job.learning_rate),
        "--rank", str(job.rank),
        "--alpha", str(job.alpha),
    ]  # fmt: skip
    if job.current_adapter is not None:
        argv += ["--current-adapter", job.current_adapter]
    return argv


def train_adapter(python: Path, job: TrainingJob, progress: Progress) -> None:
    """Run `jobs.lora_train` with the training venv's `python`, streaming its output lines."""
    env = {
        **os.environ,
        # The script is imported from the checkout; the training venv does not install it.
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
        # Carriage-return progress bars make unreadable log lines; the script prints its own.
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(  # noqa: S603 - argv is built here, not from user input
        train_command(python, job),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
    )
    assert process.stdout is not None  # stdout=PIPE
    with process:
        for line in process.stdout:
            tail.append(line.rstrip())
            progress(line.rstrip())
    if process.returncode != 0:
        lines = "\n".join(tail)
        raise LoraError(f"LoRA training failed (exit {process.returncode}):\n{lines}")
    missing = [name for name in (*ADAPTER_FILES, METRICS_FILE) if not (job.output / name).is_file()]
    if missing:
        raise LoraError(f"LoRA training wrote no {', '.join(missing)} into {job.output}")


def read_metrics(adapter: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads((adapter / METRICS_FILE).read_text())
    return metrics


# --- vLLM ----------------------------------------------------------------------------------------


def admin_url(settings: Settings) -> str:
    """Where vLLM's LoRA endpoints live: the setting, or the LLM base URL without `/v1`."""
    url = settings.nightly.lora.admin_url or settings.llm.base_url
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def load_into_vllm(settings: Settings, *, name: str, path: Path) -> str:
    """Ask vLLM to load the adapter under `name`; returns vLLM's answer.

    Raises:
        LoraError: when vLLM cannot be reached or refuses (any 4xx/5xx but "already loaded").
    """
    url = admin_url(settings) + LOAD_PATH
    headers = {"Authorization": f"Bearer {settings.llm.api_key.get_secret_value()}"}
    try:
        with httpx.Client(timeout=settings.llm.timeout_seconds) as client:
            response = client.post(
                url, json={"lora_name": name, "lora_path": str(path)}, headers=headers
            )
    except httpx.HTTPError as error:
        raise LoraError(f"vLLM at {url} could not be reached: {error}") from error
    if response.status_code == 400 and ALREADY_LOADED in response.text:
        return f"already loaded: {name}"
    if response.is_error:
        hint = (
            " (is VLLM_ALLOW_RUNTIME_LORA_UPDATING=True set on the server?)"
            if _no_route(response)
            else ""
        )
        raise LoraError(
            f"vLLM refused to load adapter {name} from {path}: HTTP {response.status_code} "
            f"{response.text[:500]}{hint}"
        )
    return response.text


def _no_route(response: httpx.Response) -> bool:
    """FastAPI's own 404/405 (`{"detail": ...}`): vLLM has the route only with runtime updating."""
    try:
        body = response.json()
    except ValueError:
        return False
    return response.status_code in (404, 405) and isinstance(body, dict) and "detail" in body


# --- the nightly step ----------------------------------------------------------------------------


def run_lora(
    settings: Settings,
    engine: Engine,
    decisions: pd.DataFrame,
    *,
    run_id: int,
    progress: bool,
    trainer: Trainer | None = None,
) -> LoraResult:
    """Export, train, evaluate and (if better) promote an adapter; see the module docstring.

    Args:
        decisions: human decisions in the shape `jobs.sft` documents.
        run_id: the nightly run (`job_runs.id`); names the folder of its SFT export.
        progress: print the trainer's output lines (one per step) as they come.
        trainer: runs one training job; default: `jobs.lora_train` in the training venv.

    Raises:
        LoraError: when training fails (a refusal by vLLM is a result, not an error).
    """
    started = time.monotonic()
    lora = settings.nightly.lora
    with step("lora: export human decisions as chat SFT examples"):
        export = sft_examples(decisions, load_policy(settings.models.policy_version))
        examples = export.examples[-lora.max_examples :]
    if len(examples) < 2:
        return _untrained(f"too few SFT examples ({len(examples)}); need at least 2", started)
    train, held_out = split_by_time(examples, lora.held_out_fraction)
    export_dir = settings.nightly.output_dir / "lora" / f"run-{run_id}"
    train_path = write_jsonl(train, export_dir / "train.jsonl")
    eval_path = write_jsonl(held_out, export_dir / "eval.jsonl")

    base = lora.base_model or str(local_base_model(settings))
    name = adapter_name(train_path, eval_path, base=base, lora=lora)
    path = lora.adapter_dir / name
    with Session(engine) as session:
        champion = crud.get_champion(session, kind=KIND)
    if champion is not None and champion.version == name:
        result = _compare(name, path, read_metrics(path), len(train), len(held_out), started)
        return replace(result, trained=False, promoted=False, reason=f"{name} is the champion")
    # The champion is the reference only if the new adapter can be compared with it.
    current = (
        champion if champion is not None and _comparable(champion, base, lora.adapter_dir) else None
    )
    trained = not (path / METRICS_FILE).is_file()
    if trained:
        lines = _print_line if progress else _ignore_line
        run = trainer or (lambda job: train_adapter(ensure_train_venv(settings), job, lines))

        def build(staging: Path) -> None:
            run(
                TrainingJob(
                    base=base,
                    train=train_path,
                    eval=eval_path,
                    output=staging,
                    current_adapter=current.artifact_uri if current else None,
                    max_steps=lora.max_steps,
                    batch_size=lora.batch_size,
                    learning_rate=lora.learning_rate,
                    rank=lora.rank,
                    alpha=lora.alpha,
                )
            )

        with step(f"lora: train {name} ({len(train)} examples, {lora.max_steps} steps)"):
            cache_entry(lora.adapter_dir, name, build)
    metrics = read_metrics(path)
    result = replace(
        _compare(name, path, metrics, len(train), len(held_out), started, current=current),
        trained=trained,
    )
    status = ModelStatus.CHALLENGER
    if result.promoted:
        try:
            with step(f"lora: load {name} into vLLM at {admin_url(settings)}"):
                load_into_vllm(settings, name=name, path=path)
            status = ModelStatus.CHAMPION
        except LoraError as error:
            result = replace(result, promoted=False, reason=f"{result.reason}; {error}")
    with Session(engine) as session:
        crud.register_model_version(
            session,
            kind=KIND,
            version=name,
            artifact_uri=str(path),
            artifact_sha256=artifact_digest(path),
            metrics={**metrics, "compared_with": result.current or "base", "run_id": run_id},
            status=status,
        )
    return replace(result, seconds=time.monotonic() - started)


def _print_line(line: str) -> None:
    console.print(line, markup=False, highlight=False)


def _ignore_line(line: str) -> None:
    """Output not shown; `train_adapter` keeps its tail for the error message."""


def _comparable(champion: ModelVersion, base: str, store: Path) -> bool:
    """True when the champion's adapter was trained on the same base model and may be loaded.

    May be loaded: inside `store`, with the digest the registry holds, safetensors weights and
    no pickle (`moderation.classifier.artifacts`). A refused adapter is logged and not compared.
    """
    if champion.metrics.get("base") != base:
        return False
    try:
        _, files = load_checked(champion.artifact_uri, store, champion.artifact_sha256)
        if any(name.endswith(PICKLE_SUFFIXES) for name in files):
            raise ArtifactRefused("format", f"{champion.artifact_uri} holds a pickle")
    except ArtifactRefused as refused:
        logger.error(
            "agent-lora champion %s REFUSED (%s): %s; not compared with it",
            champion.version,
            refused.reason,
            refused,
        )
        return False
    except OSError:
        return False
    return all(name in files for name in ADAPTER_FILES)


def _compare(
    name: str,
    path: Path,
    metrics: dict[str, Any],
    train_examples: int,
    held_out_examples: int,
    started: float,
    *,
    current: ModelVersion | None = None,
) -> LoraResult:
    """The adapter's eval loss against the champion's (`current`) or else the base model's."""
    losses = [float(entry["loss"]) for entry in metrics["train_loss"]]
    challenger = float(metrics["eval_loss"])
    evaluated_with = metrics.get("current_adapter")
    if current is not None and evaluated_with == current.artifact_uri:
        reference, against = float(metrics["eval_loss_current"]), f"champion {current.version}"
    else:
        reference, against = float(metrics["eval_loss_base"]), "the base model"
    better = challenger < reference
    reason = f"eval loss {challenger:.4f} {'<' if better else '>='} {reference:.4f} of {against}"
    if current is not None and evaluated_with != current.artifact_uri:
        # Trained on the same data earlier, while another adapter (or none) was champion.
        better = False
        reason += f"; not compared with the champion {current.version} (trained before it)"
    return LoraResult(
        adapter=name,
        path=path,
        train_examples=train_examples,
        held_out_examples=held_out_examples,
        train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None,
        eval_loss=challenger,
        eval_loss_current=reference,
        current=current.version if current else None,
        trained=True,
        promoted=better,
        reason=reason,
        seconds=time.monotonic() - started,
    )


def _untrained(reason: str, started: float) -> LoraResult:
    return LoraResult(
        adapter=None,
        path=None,
        train_examples=0,
        held_out_examples=0,
        train_loss_first=None,
        train_loss_last=None,
        eval_loss=None,
        eval_loss_current=None,
        current=None,
        trained=False,
        promoted=False,
        reason=reason,
        seconds=time.monotonic() - started,
    )
