# syntax=docker/dockerfile:1
# The nightly feedback loop (`moderation nightly [--lora]`), a one-shot job, with the `[train]`
# extra (torch, PEFT, TRL) for the LoRA step.
# Build from the repository root: docker build -f docker/nightly.Dockerfile -t moderation-nightly:local .
#
# Why the same python:3.11-slim base and no CUDA base image: torch's PyPI wheels (locked in
# uv.lock) bring the CUDA runtime as nvidia-* wheels, so the image needs only the host's driver,
# which the NVIDIA container toolkit mounts on a GPU node. A nvidia/cuda base would add a second
# copy of the same libraries and a second Python. The same image runs on CPU, slowly.
# Base images are pinned by tag only (no registry to resolve digests where this was written).

# --- builder: the locked venv with the train extra in /app/.venv --------------------------------
FROM python:3.11-slim-bookworm AS builder
RUN pip install --no-cache-dir uv==0.13.8
ENV UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra train --no-install-project
COPY README.md ./
COPY moderation ./moderation
COPY hitl_dashboard ./hitl_dashboard
COPY jobs ./jobs
# Editable: the job reads data/ next to the package (settings.PROJECT_ROOT is /app).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra train

# --- dataset: the fast model's labelled data, as in service.Dockerfile --------------------------
FROM node:22-bookworm-slim AS node

FROM builder AS dataset
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
COPY data ./data
ENV MODERATION_STACK__CACHE_DIR=/opt/moderation/cache
RUN /app/.venv/bin/python data/build_dataset.py \
    && rm -rf /opt/moderation/cache/fast-model-data/downloads

# --- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
# Same paths as the services and the Kubernetes CronJob: the models volume is shared with the
# workers (artifacts) and with vLLM (adapters, and the base model's Hugging Face cache).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    MODERATION_STACK__CACHE_DIR=/opt/moderation/cache \
    MODERATION_MODELS__ARTIFACT_DIR=/models \
    MODERATION_NIGHTLY__OUTPUT_DIR=/models/nightly \
    MODERATION_NIGHTLY__LORA__ADAPTER_DIR=/models/lora \
    HF_HOME=/models/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid moderation --create-home --home-dir /home/moderation \
       --shell /usr/sbin/nologin moderation \
    && install -d -o moderation -g moderation /models
WORKDIR /app
COPY --from=builder /app/.venv ./.venv
COPY pyproject.toml ./
COPY moderation ./moderation
COPY hitl_dashboard ./hitl_dashboard
COPY jobs ./jobs
COPY data ./data
COPY --from=dataset /opt/moderation/cache /opt/moderation/cache
USER 10001:10001
# No HEALTHCHECK: a one-shot job; its exit status and job_runs row say how it went.
ENTRYPOINT ["moderation"]
CMD ["nightly"]
