"""The API's internal listener (`api.internal_host:api.internal_port`): readiness with its
detail, liveness and Prometheus metrics, for kubelet probes and Prometheus only.

It is a second ASGI app served by a second uvicorn server in the same process (`cli.run_api`),
so nothing on it is reachable through the public port, where the ingress sends traffic. It shares
the public app's `State`: the resources the public app's lifespan creates (`state.api`) are the
ones its readiness checks, and its metrics are the public app's.
"""

from __future__ import annotations

from fastapi import FastAPI

from moderation.services.api.routes import health


def create_internal_app(public: FastAPI) -> FastAPI:
    """The internal app of `public` (built by `build_app`): `/healthz`, `/readyz`, `/metrics`."""
    app = FastAPI(
        title="moderation ingest API (internal)",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state = public.state
    app.include_router(health.internal_router)
    return app
