"""LoRA fine-tuning for real, on CPU: the SFT export, the training venv, a few steps on SmolLM2.

The training venv (`moderation.devtools.stack.train_env`, the `[train]` extra) is installed if
missing, and
`jobs.lora_train` runs through the same subprocess path the nightly job uses (`train_adapter`),
on the local SmolLM2-135M GGUF. Only vLLM's part cannot run here (CUDA-only); the unit tests play
it with an HTTP double.

The examples come from the real export (`sft_examples`) with a compact policy: the real policy
makes every prompt ~2,300 tokens, and on 2 CPU cores one training step on two such examples took
~80 s (peak RSS 14 GB), so a CPU run would take many minutes. The instruction template and the
user and assistant messages are the real ones; a GPU trains on the full policy.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import mean

import pandas as pd
import pytest

from jobs.lora import TrainingJob, read_metrics, split_by_time, train_adapter
from jobs.sft import sft_examples, write_jsonl
from moderation.devtools.stack.train_env import ensure_train_venv, local_base_model
from moderation.policy import Policy
from moderation.settings import PROJECT_ROOT, Settings
from moderation.taxonomy import CATEGORIES, Category

# A cold install downloads ~6 GB of wheels (about a minute from a PyPI mirror); training ~2 min.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1_800)]

SEED_POSTS = PROJECT_ROOT / "data" / "seed_posts.jsonl"
COMPACT_POLICY = Policy(
    version="cpu-test",
    preamble="Judge the post itself; when unsure, decide review.",
    sections={
        category: f"Posts about {category.value.replace('_', ' ')}: "
        + ("allow." if category is Category.SAFE else "remove.")
        for category in CATEGORIES
    },
)


def decided_posts(count: int) -> pd.DataFrame:
    """Human decisions on seed posts of every label, round robin, a day apart."""
    by_label: dict[str, list[dict[str, str]]] = {}
    for line in SEED_POSTS.read_text().splitlines():
        row = json.loads(line)
        by_label.setdefault(row["label"], []).append(row)
    picked = [rows[i] for i in range(count) for rows in by_label.values() if i < len(rows)]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return pd.DataFrame(
        [
            {
                "post_id": f"post-{i}",
                "author_id": f"author-{i % 5}",
                "text": row["text"],
                "label": row["label"],
                "decision": "allow" if row["label"] == "safe" else "remove",
                "note": None,
                "decided_at": start + timedelta(days=i),
                "model_scores": {c.value: 0.6 if c == row["label"] else 0.05 for c in CATEGORIES},
            }
            for i, row in enumerate(picked[:count])
        ]
    )


def test_a_few_lora_steps_on_cpu_lower_the_loss_and_write_a_peft_adapter(
    settings: Settings, tmp_path: Path
) -> None:
    started = time.monotonic()
    python = ensure_train_venv(settings)
    base = local_base_model(settings)
    ready = time.monotonic() - started

    examples = sft_examples(decided_posts(18), COMPACT_POLICY).examples
    train, held_out = split_by_time(examples, 0.1)
    assert (len(train), len(held_out)) == (16, 2)
    job = TrainingJob(
        base=str(base),
        train=write_jsonl(train, tmp_path / "train.jsonl"),
        eval=write_jsonl(held_out, tmp_path / "eval.jsonl"),
        output=tmp_path / "first",
        current_adapter=None,
        max_steps=4,
        batch_size=2,
        learning_rate=1e-3,
        rank=8,
        alpha=16,
    )
    lines: list[str] = []
    train_adapter(python, job, lines.append)

    first = read_metrics(job.output)
    losses = [entry["loss"] for entry in first["train_loss"]]
    assert len(losses) == 4 and mean(losses[-2:]) < mean(losses[:2])
    assert first["eval_loss"] < first["eval_loss_base"]
    assert sum("lora_train: step" in line for line in lines) == 4  # streamed, one line a step
    config = json.loads((job.output / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 8, 16)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    assert (job.output / "adapter_model.safetensors").stat().st_size > 0

    # The next night: the first adapter is the one in service. PEFT loads it back into the
    # training process and finds exactly the loss it had when it was trained.
    second = replace(job, output=tmp_path / "second", current_adapter=str(job.output), max_steps=1)
    train_adapter(python, second, lines.append)
    metrics = read_metrics(second.output)
    assert metrics["current_adapter"] == str(job.output)
    assert metrics["eval_loss_current"] == pytest.approx(first["eval_loss"], abs=1e-4)
    assert metrics["eval_loss_base"] == pytest.approx(first["eval_loss_base"], abs=1e-4)
    numbers = {
        "venv_and_model_ready_seconds": round(ready, 1),
        "train_loss": [round(loss, 4) for loss in losses],
        "eval_loss_base": round(first["eval_loss_base"], 4),
        "eval_loss_adapter": round(first["eval_loss"], 4),
        "seconds_per_step": round(first["seconds_per_step"], 1),
        "first_run_seconds": round(first["seconds"]),
        "test_seconds": round(time.monotonic() - started),
    }
    print(json.dumps(numbers))  # noqa: T201 - the numbers the issue asks to report
