# syntax=docker/dockerfile:1
# The moderators' Streamlit dashboard (`moderation dashboard`, port 8501). It talks only to the
# review API (MODERATION_DASHBOARD__API_URL) with the moderator's own key: no database, no secret.
# Build from the repository root: docker build -f docker/dashboard.Dockerfile -t moderation-dashboard:local .
# Base images are pinned by tag only (no registry to resolve digests where this was written).

# --- builder: the locked venv in /app/.venv (as in service.Dockerfile) --------------------------
FROM python:3.11-slim-bookworm AS builder
RUN pip install --no-cache-dir uv==0.13.8
ENV UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
COPY README.md ./
COPY moderation ./moderation
COPY hitl_dashboard ./hitl_dashboard
COPY jobs ./jobs
# Editable: `moderation dashboard` finds hitl_dashboard/app.py next to the package.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev

# --- runtime -------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
# Streamlit binds MODERATION_WORKER__SERVICE_HOST.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/app/.venv/bin:$PATH \
    MODERATION_WORKER__SERVICE_HOST=0.0.0.0
RUN groupadd --system --gid 10001 moderation \
    && useradd --system --uid 10001 --gid moderation --create-home --home-dir /home/moderation \
       --shell /usr/sbin/nologin moderation
WORKDIR /app
COPY --from=builder /app/.venv ./.venv
COPY moderation ./moderation
COPY hitl_dashboard ./hitl_dashboard
USER 10001:10001
EXPOSE 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=3)"]
ENTRYPOINT ["moderation"]
CMD ["dashboard"]
