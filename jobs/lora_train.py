"""Train a LoRA adapter for the classifier agent's model on the SFT export (`jobs/sft.py`).

Runs in the training venv (`moderation.devtools.stack.train_env`), so it imports only the standard
library and the `[train]` extra (torch, transformers, peft, trl), never `moderation`:

    python -m jobs.lora_train --base MODEL --train train.jsonl --eval eval.jsonl \
        --output DIR --max-steps 200 [--current-adapter DIR]

`--base` is a Hugging Face model directory or id, or a `.gguf` file (transformers dequantizes it
on load; its tokenizer carries the chat template). Each chat example is split into a prompt (system
and user messages) and a completion (the assistant's verdict), so TRL computes the loss on the
verdict tokens only. Writes the PEFT adapter (`adapter_config.json`,
`adapter_model.safetensors`) and `metrics.json` into `--output`: the training loss per step, the
eval loss of the base model, of the new adapter and (with `--current-adapter`) of the adapter
now in service, all on the same eval set, so the caller can compare them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch  # type: ignore[import-not-found]  # the training venv only ([train] extra)
from datasets import Dataset  # type: ignore[import-not-found]
from peft import LoraConfig  # type: ignore[import-not-found]
from transformers import (  # type: ignore[import-not-found]
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    TrainerCallback,
)
from trl import SFTConfig, SFTTrainer  # type: ignore[import-not-found]

logger = logging.getLogger("jobs.lora_train")

METRICS_FILE = "metrics.json"
TARGET_MODULES = ["q_proj", "v_proj"]
CURRENT = "current"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.lora_train", description=__doc__)
    parser.add_argument("--base", required=True, help="HF model dir or id, or a .gguf file")
    parser.add_argument("--train", type=Path, required=True, help="chat examples (JSONL)")
    parser.add_argument("--eval", type=Path, required=True, help="held-out chat examples (JSONL)")
    parser.add_argument("--output", type=Path, required=True, help="adapter and metrics.json")
    parser.add_argument("--current-adapter", help="the adapter in service, to compare")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def load_base(base: str) -> tuple[Any, Any]:
    """The model and tokenizer; a GGUF file is dequantized to a plain trainable model."""
    path = Path(base)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        # The weights are dequantized (float32) already, but the model still carries the GGUF
        # quantizer and its config the mark, and the Trainer refuses to train a model quantized
        # with a method that does not support training.
        model.hf_quantizer.remove_quantization_config(model)
        model.config._is_quantized = False
    else:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
    return model, tokenizer


def prompt_completion(path: Path) -> Any:
    """The chat examples as a dataset of (prompt, completion): loss on the verdict only."""
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                messages = json.loads(line)["messages"]
                rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    if not rows:
        raise SystemExit(f"{path} holds no examples")
    return Dataset.from_list(rows)


class StepLines(TrainerCallback):  # type: ignore[misc]  # untyped base class
    """One progress line per logged step (the nightly job streams them), loss kept per step."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps
        self.losses: list[dict[str, float]] = []
        self.started = time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            step = int(state.global_step)
            self.losses.append({"step": step, "loss": float(logs["loss"])})
            per_step = (time.monotonic() - self.started) / max(step, 1)
            logger.info(
                "step %d/%d loss %.4f (%.2f s/step)", step, self.max_steps, logs["loss"], per_step
            )


def eval_loss(trainer: Any) -> float:
    return float(trainer.evaluate()["eval_loss"])


def train(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    torch.manual_seed(args.seed)
    model, tokenizer = load_base(args.base)
    train_set = prompt_completion(args.train)
    eval_set = prompt_completion(args.eval)
    gpu = torch.cuda.is_available()
    config = SFTConfig(
        output_dir=str(args.output),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        # The policy prompt alone is ~2,100 tokens: truncating would cut the verdict off.
        max_length=None,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        # Memory on a GPU; on CPU (the tests' 135M model) recomputing only costs time.
        activation_checkpointing=gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=gpu,
    )
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    progress = StepLines(args.max_steps)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)  # it prints each log dict: one line a step is ours
    # LoRA starts with B = 0: before training, the adapted model is exactly the base model.
    base_loss = eval_loss(trainer)
    logger.info("eval loss of the base model %.4f (%d examples)", base_loss, len(eval_set))
    progress.started = time.monotonic()
    trainer.train()
    train_seconds = time.monotonic() - progress.started
    adapter_loss = eval_loss(trainer)
    logger.info("eval loss of the new adapter %.4f", adapter_loss)
    trainer.model.save_pretrained(str(args.output))
    current_loss = None
    if args.current_adapter is not None:
        # Loaded after saving: save_pretrained writes every adapter the model holds.
        trainer.model.load_adapter(args.current_adapter, adapter_name=CURRENT)
        trainer.model.set_adapter(CURRENT)
        current_loss = eval_loss(trainer)
        logger.info("eval loss of the current adapter %.4f", current_loss)
    return {
        "base": args.base,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "rank": args.rank,
        "alpha": args.alpha,
        "target_modules": TARGET_MODULES,
        "device": "cuda" if gpu else "cpu",
        "train_loss": progress.losses,
        "eval_loss": adapter_loss,
        "eval_loss_base": base_loss,
        "eval_loss_current": current_loss,
        "current_adapter": args.current_adapter,
        "seconds_per_step": train_seconds / max(args.max_steps, 1),
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="lora_train: %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    metrics = train(args)
    (args.output / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("adapter and %s written to %s", METRICS_FILE, args.output)


if __name__ == "__main__":
    main()
