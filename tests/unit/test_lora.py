"""The LoRA step of the nightly job, with a fake trainer and an HTTP double of vLLM.

vLLM cannot run on these machines (its wheels are CUDA-only), so its adapter endpoint is played by
a small real HTTP server in a thread (`VllmDouble`) that checks what vLLM checks (path, bearer
key, JSON body with `lora_name` and `lora_path`) and answers as vLLM does: 200 with a plain-text
success line, 400 "has already been loaded" for a name it serves already. The real training runs
in `tests/integration/test_lora_training.py`.
"""

from __future__ import annotations

import json
import stat
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session

from jobs.lora import (
    KIND,
    LoraError,
    TrainingJob,
    admin_url,
    load_into_vllm,
    run_lora,
    split_by_time,
    train_adapter,
)
from jobs.sft import Example
from moderation.classifier.artifacts import artifact_digest
from moderation.db import crud
from moderation.db.models import ModelStatus
from moderation.devtools.stack.train_env import (
    ensure_train_venv,
    has_pins,
    train_requirements,
    train_venv_dir,
)
from moderation.settings import Settings
from moderation.taxonomy import CATEGORIES
from tests import crud_helpers

API_KEY = "test-vllm-key"
BASE = "test-base-model"


class VllmDouble(ThreadingHTTPServer):
    """`POST /v1/load_lora_adapter` as vLLM answers it (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.loaded: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: VllmDouble

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        if self.path != "/v1/load_lora_adapter":
            return self._answer(404, {"detail": "Not Found"})
        if self.headers["Authorization"] != f"Bearer {API_KEY}":
            return self._answer(401, {"error": "Unauthorized"})
        if self.headers["Content-Type"] != "application/json":
            return self._answer(415, {"error": "Unsupported Media Type"})
        if self.server.fail_with is not None:
            return self._answer(self.server.fail_with, _error("engine failed", "InternalError"))
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return self._answer(400, _error("Both 'lora_name' and 'lora_path' must be provided."))
        if name in self.server.loaded:
            return self._answer(400, _error(f"The lora adapter '{name}' has already been loaded."))
        if not (Path(path) / "adapter_config.json").is_file():
            return self._answer(404, _error(f"No adapter found for {path}", "NotFoundError"))
        self.server.loaded[name] = path
        self._answer(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _answer(self, status: int, content: dict[str, Any] | str) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        self.send_response(status)
        self.send_header(
            "Content-Type", "text/plain" if isinstance(content, str) else "application/json"
        )
        self.send_header("Content-Length", str(len(text.encode())))
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Quiet: the test asserts on the recorded requests instead."""


def _error(message: str, kind: str = "InvalidUserInput") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": 400}}


@pytest.fixture
def vllm() -> Iterator[VllmDouble]:
    server = VllmDouble()
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def settings(tmp_path: Path, vllm: VllmDouble) -> Settings:
    base = Settings()
    lora = base.nightly.lora.model_copy(
        update={
            "base_model": BASE,
            "admin_url": vllm.url,
            "adapter_dir": tmp_path / "adapters",
            "max_steps": 3,
            "held_out_fraction": 0.25,
        }
    )
    nightly = base.nightly.model_copy(update={"output_dir": tmp_path / "nightly", "lora": lora})
    llm = base.llm.model_copy(update={"api_key": SecretStr(API_KEY)})
    return base.model_copy(update={"nightly": nightly, "llm": llm})


class FakeTrainer:
    """Writes what `jobs.lora_train` writes, with the losses it is given."""

    def __init__(self, eval_loss: float = 0.8, base: float = 1.2, current: float = 1.0) -> None:
        self.losses = {"eval_loss": eval_loss, "eval_loss_base": base, "current": current}
        self.jobs: list[TrainingJob] = []

    def __call__(self, job: TrainingJob) -> None:
        self.jobs.append(job)
        (job.output / "adapter_config.json").write_text(json.dumps({"r": job.rank}))
        (job.output / "adapter_model.safetensors").write_bytes(b"weights")
        metrics = {
            "base": job.base,
            "train_loss": [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.1}],
            "eval_loss": self.losses["eval_loss"],
            "eval_loss_base": self.losses["eval_loss_base"],
            "eval_loss_current": self.losses["current"] if job.current_adapter else None,
            "current_adapter": job.current_adapter,
        }
        (job.output / "metrics.json").write_text(json.dumps(metrics))


def decisions(count: int = 8) -> pd.DataFrame:
    scores = {c.value: 0.1 for c in CATEGORIES}
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return pd.DataFrame(
        [
            {
                "post_id": f"p{i}",
                "author_id": "a1",
                "text": f"post number {i}",
                "label": "spam" if i % 2 else "safe",
                "decision": "remove" if i % 2 else "allow",
                "note": None,
                "decided_at": start + timedelta(days=i),
                "model_scores": scores,
            }
            for i in range(count)
        ]
    )


def registry(engine: Engine) -> list[tuple[str, ModelStatus, str]]:
    with Session(engine) as session:
        rows = crud_helpers.list_model_versions(session, kind=KIND)
        return [(row.version, row.status, row.artifact_uri) for row in rows]


def champion_adapter(
    engine: Engine,
    tmp_path: Path,
    *,
    base: str = BASE,
    store: str = "adapters",
    digest: str | None = None,
    pickle: bool = False,
) -> str:
    """An adapter promoted by an earlier night, on disk (with its digest, unless `digest`)."""
    path = tmp_path / store / "agent-lora-earlier"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"earlier weights")
    if pickle:
        (path / "adapter_model.bin").write_bytes(b"a pickle peft would torch.load")
    with Session(engine) as session:
        crud.register_model_version(
            session,
            kind=KIND,
            version="agent-lora-earlier",
            artifact_uri=str(path),
            artifact_sha256=digest or artifact_digest(path),
            metrics={"base": base},
            status=ModelStatus.CHAMPION,
        )
    return str(path)


def test_a_better_adapter_is_loaded_into_vllm_then_promoted(
    settings: Settings, engine: Engine, vllm: VllmDouble
) -> None:
    trainer = FakeTrainer(eval_loss=0.8, base=1.2)
    result = run_lora(settings, engine, decisions(), run_id=7, progress=False, trainer=trainer)

    assert result.promoted and result.trained and result.adapter is not None
    assert result.path == settings.nightly.lora.adapter_dir / result.adapter
    assert (result.train_examples, result.held_out_examples) == (6, 2)
    assert (result.train_loss_first, result.train_loss_last) == (1.5, 1.1)
    assert (result.eval_loss, result.eval_loss_current, result.current) == (0.8, 1.2, None)
    assert "the base model" in result.reason
    assert vllm.requests == [{"lora_name": result.adapter, "lora_path": str(result.path)}]
    assert registry(engine) == [(result.adapter, ModelStatus.CHAMPION, str(result.path))]
    (job,) = trainer.jobs
    assert (job.base, job.max_steps, job.rank, job.current_adapter) == (BASE, 3, 8, None)
    # The newest decisions are held out: the time split.
    held_out = job.eval.read_text().splitlines()
    assert [json.loads(line)["messages"][1]["content"].split()[1] for line in held_out] == [
        "p6",
        "p7",
    ]
    assert job.train.parent == settings.nightly.output_dir / "lora" / "run-7"
    json.dumps(result.as_dict())  # ready for the job run record
    assert f"`{result.adapter}`" in result.render() and "**promoted**" in result.render()


def test_a_rerun_on_the_same_data_duplicates_nothing(
    settings: Settings, engine: Engine, vllm: VllmDouble
) -> None:
    trainer = FakeTrainer()
    first = run_lora(settings, engine, decisions(), run_id=1, progress=False, trainer=trainer)
    again = run_lora(settings, engine, decisions(), run_id=2, progress=False, trainer=trainer)

    assert again.adapter == first.adapter and again.path == first.path
    assert len(trainer.jobs) == 1 and not again.trained
    assert not again.promoted and again.reason.endswith("is the champion")
    assert len(vllm.requests) == 1
    assert registry(engine) == [(first.adapter, ModelStatus.CHAMPION, str(first.path))]
    assert [p.name for p in settings.nightly.lora.adapter_dir.iterdir()] == [first.adapter]


def test_other_data_gives_another_adapter(settings: Settings, engine: Engine) -> None:
    trainer = FakeTrainer()
    first = run_lora(settings, engine, decisions(8), run_id=1, progress=False, trainer=trainer)
    second = run_lora(settings, engine, decisions(9), run_id=2, progress=False, trainer=trainer)

    assert first.adapter != second.adapter and len(trainer.jobs) == 2


def test_an_adapter_no_better_than_the_base_stays_a_challenger(
    settings: Settings, engine: Engine, vllm: VllmDouble
) -> None:
    trainer = FakeTrainer(eval_loss=1.3, base=1.2)
    result = run_lora(settings, engine, decisions(), run_id=1, progress=False, trainer=trainer)

    assert not result.promoted and "1.3000 >= 1.2000 of the base model" in result.reason
    assert vllm.requests == []
    assert registry(engine) == [(result.adapter, ModelStatus.CHALLENGER, str(result.path))]


@pytest.mark.parametrize(("eval_loss", "promoted"), [(0.9, True), (1.1, False)])
def test_the_champion_adapter_is_the_reference(
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    vllm: VllmDouble,
    eval_loss: float,
    promoted: bool,
) -> None:
    current = champion_adapter(engine, tmp_path)
    # Better than the base model (1.2) either way; only the champion (1.0) decides.
    trainer = FakeTrainer(eval_loss=eval_loss, base=1.2, current=1.0)
    result = run_lora(settings, engine, decisions(), run_id=1, progress=False, trainer=trainer)

    assert trainer.jobs[0].current_adapter == current
    assert result.current == "agent-lora-earlier" and result.eval_loss_current == 1.0
    assert result.promoted is promoted
    with Session(engine) as session:
        champion = crud.get_champion(session, kind=KIND)
    assert champion is not None
    assert champion.version == (result.adapter if promoted else "agent-lora-earlier")


def test_a_champion_on_another_base_model_is_not_the_reference(
    settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    champion_adapter(engine, tmp_path, base="another-base")
    trainer = FakeTrainer(eval_loss=0.9, base=1.2)
    result = run_lora(settings, engine, decisions(), run_id=1, progress=False, trainer=trainer)

    assert trainer.jobs[0].current_adapter is None
    assert result.current is None and result.promoted


@pytest.mark.parametrize(
    ("store", "digest", "pickle"),
    [("elsewhere", None, False), ("adapters", "0" * 64, False), ("adapters", None, True)],
    ids=["outside-the-store", "tampered", "holding-a-pickle"],
)
def test_a_champion_adapter_that_may_not_be_loaded_is_never_handed_to_the_trainer(
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    store: str,
    digest: str | None,
    pickle: bool,
) -> None:
    champion_adapter(engine, tmp_path, store=store, digest=digest, pickle=pickle)
    trainer = FakeTrainer(eval_loss=0.9, base=1.2)
    result = run_lora(settings, engine, decisions(), run_id=1, progress=False, trainer=trainer)

    assert trainer.jobs[0].current_adapter is None
    assert result.current is None and "the base model" in result.reason


def test_vllm_refusing_the_adapter_means_no_promotion(
    settings: Settings, engine: Engine, vllm: VllmDouble
) -> None:
    vllm.fail_with = 500
    result = run_lora(
        settings, engine, decisions(), run_id=1, progress=False, trainer=FakeTrainer()
    )

    assert not result.promoted
    assert "vLLM refused to load adapter" in result.reason and "HTTP 500" in result.reason
    assert registry(engine) == [(result.adapter, ModelStatus.CHALLENGER, str(result.path))]

    # The next night, vLLM is back: the same adapter is loaded and promoted, not retrained.
    vllm.fail_with = None
    trainer = FakeTrainer()
    again = run_lora(settings, engine, decisions(), run_id=2, progress=False, trainer=trainer)
    assert again.promoted and not again.trained and trainer.jobs == []
    assert registry(engine) == [(result.adapter, ModelStatus.CHAMPION, str(result.path))]


def test_an_adapter_vllm_already_serves_counts_as_loaded(
    settings: Settings, vllm: VllmDouble, tmp_path: Path
) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    first = load_into_vllm(settings, name="agent-lora-x", path=tmp_path)
    again = load_into_vllm(settings, name="agent-lora-x", path=tmp_path)

    assert first == "Success: LoRA adapter 'agent-lora-x' added successfully."
    assert again == "already loaded: agent-lora-x"


def test_vllm_errors_are_clear(settings: Settings, vllm: VllmDouble, tmp_path: Path) -> None:
    with pytest.raises(LoraError, match="HTTP 404.*No adapter found"):
        load_into_vllm(settings, name="agent-lora-x", path=tmp_path / "missing")
    wrong_key = settings.model_copy(
        update={"llm": settings.llm.model_copy(update={"api_key": SecretStr("wrong")})}
    )
    with pytest.raises(LoraError, match="HTTP 401"):
        load_into_vllm(wrong_key, name="agent-lora-x", path=tmp_path)
    lora = settings.nightly.lora.model_copy(update={"admin_url": f"{vllm.url}/elsewhere"})
    no_route = settings.model_copy(
        update={"nightly": settings.nightly.model_copy(update={"lora": lora})}
    )
    with pytest.raises(LoraError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        load_into_vllm(no_route, name="agent-lora-x", path=tmp_path)
    vllm.shutdown()
    vllm.server_close()
    with pytest.raises(LoraError, match="could not be reached"):
        load_into_vllm(settings, name="agent-lora-x", path=tmp_path)


def test_admin_url_defaults_to_the_llm_endpoint_without_v1() -> None:
    base = Settings()
    llm = base.llm.model_copy(update={"base_url": "http://vllm:8000/v1/"})
    assert admin_url(base.model_copy(update={"llm": llm})) == "http://vllm:8000"
    lora = base.nightly.lora.model_copy(update={"admin_url": "http://vllm-admin:9000"})
    nightly = base.nightly.model_copy(update={"lora": lora})
    assert admin_url(base.model_copy(update={"nightly": nightly})) == "http://vllm-admin:9000"


def test_too_few_examples_trains_nothing(settings: Settings, engine: Engine) -> None:
    trainer = FakeTrainer()
    result = run_lora(settings, engine, decisions(1), run_id=1, progress=False, trainer=trainer)

    assert result.adapter is None and not result.promoted and trainer.jobs == []
    assert "too few SFT examples (1)" in result.render()


def test_time_split_holds_out_the_newest_and_at_least_one() -> None:
    examples = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]

    def numbers(part: list[Example]) -> list[int]:
        return [int(example["messages"][0]["content"]) for example in part]

    train, held_out = split_by_time(examples, 0.2)
    assert (numbers(train), numbers(held_out)) == (list(range(8)), [8, 9])
    train, held_out = split_by_time(examples[:3], 0.1)
    assert (numbers(train), numbers(held_out)) == ([0, 1], [2])


def fake_python(tmp_path: Path, body: str) -> Path:
    """An executable standing in for the training venv's interpreter."""
    script = tmp_path / "python"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\n{body}")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def training_job(tmp_path: Path) -> TrainingJob:
    return TrainingJob(
        base=BASE,
        train=tmp_path / "train.jsonl",
        eval=tmp_path / "eval.jsonl",
        output=tmp_path / "out",
        current_adapter="/adapters/current",
        max_steps=2,
        batch_size=2,
        learning_rate=5e-4,
        rank=8,
        alpha=16,
    )


def test_train_adapter_runs_the_script_and_streams_its_lines(tmp_path: Path) -> None:
    python = fake_python(
        tmp_path,
        "args = sys.argv[1:]\n"
        "out = Path(args[args.index('--output') + 1]); out.mkdir()\n"
        "for name in ('adapter_config.json', 'adapter_model.safetensors', 'metrics.json'):\n"
        "    (out / name).write_text('{}')\n"
        "print(' '.join(args))\n"
        "print('lora_train: step 1/2 loss 1.5')\n",
    )
    lines: list[str] = []
    train_adapter(python, training_job(tmp_path), lines.append)

    command, step = lines
    assert command.startswith(f"-m jobs.lora_train --base {BASE} --train ")
    assert "--max-steps 2 --batch-size 2" in command
    assert command.endswith("--current-adapter /adapters/current")
    assert step == "lora_train: step 1/2 loss 1.5"


def test_a_failing_training_run_says_why(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "print('loading'); sys.exit('CUDA out of memory')\n")
    with pytest.raises(LoraError, match=r"(?s)exit 1.*CUDA out of memory"):
        train_adapter(python, training_job(tmp_path), lambda line: None)
    quiet = fake_python(tmp_path, "print('done')\n")
    with pytest.raises(LoraError, match="wrote no adapter_config.json"):
        train_adapter(quiet, training_job(tmp_path), lambda line: None)


def test_the_script_runs_from_the_checkout(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "import os; print(os.environ['PYTHONPATH'], os.getcwd())\n")
    lines: list[str] = []
    with pytest.raises(LoraError):
        train_adapter(python, training_job(tmp_path), lines.append)
    root = str(Path(__file__).resolve().parents[2])
    assert lines == [f"{root} {root}"]


def test_the_training_venv_is_keyed_by_the_train_pins_and_python(tmp_path: Path) -> None:
    requirements = train_requirements()
    assert all("==" in requirement for requirement in requirements)
    assert {r.split("==")[0] for r in requirements} >= {"torch", "transformers", "peft", "trl"}

    base = Settings()
    stack = base.stack.model_copy(update={"cache_dir": tmp_path})
    venv = train_venv_dir(base.model_copy(update={"stack": stack}))
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert venv.parent == tmp_path and venv.name.startswith(f"train-venv-{python}-")
    assert venv == train_venv_dir(base.model_copy(update={"stack": stack}))


def test_an_interpreter_with_the_train_pins_trains_itself(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    installed = f"pytest=={pytest.__version__}"
    assert has_pins([installed])
    assert not has_pins([installed, "pytest==0.0.1"])
    assert not has_pins(["no-such-package-here==1.0"])
    # The nightly image installs the extra into its only venv: no second venv there.
    monkeypatch.setattr(
        "moderation.devtools.stack.train_env.train_requirements", lambda: [installed]
    )
    base = Settings()
    stack = base.stack.model_copy(update={"cache_dir": tmp_path})
    assert ensure_train_venv(base.model_copy(update={"stack": stack})) == Path(sys.executable)
    assert list(tmp_path.iterdir()) == []  # nothing installed
