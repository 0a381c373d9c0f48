"""The shared tokens between a Dapr app and its daprd, both ways (Dapr's API token auth).

- `settings.dapr.api_token`: daprd started with `DAPR_API_TOKEN` refuses every call to its HTTP
  and gRPC API without the header `dapr-api-token` (its health endpoints excepted). The Python
  SDK sends `dapr.conf.settings.DAPR_API_TOKEN`, read from the environment at import; here it
  is set from the settings, so `MODERATION_DAPR__API_TOKEN` works as well as Dapr's variable.
- `settings.dapr.app_token`: daprd started with `APP_API_TOKEN` sends that header on every call
  to the app (subscriptions, deliveries, job triggers); `AppTokenGuard` refuses calls without it.

The local stack generates both tokens (`moderation/devtools/stack/dapr.py`); in Kubernetes they
come from
secrets (`dapr.io/api-token-secret`, `dapr.io/app-token-secret`).
"""

from __future__ import annotations

import hmac

from pydantic import SecretStr
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from moderation.settings import Settings

TOKEN_HEADER = "dapr-api-token"
# Probes and Prometheus reach the app directly, never through daprd.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def use_api_token(settings: Settings) -> None:
    """Make every Dapr SDK client created from now on in this process send the API token.

    The SDK reads its token from a process-wide settings object when a client is created, so
    this runs before the first `DaprClient`, `DaprWorkflowClient` or `WorkflowRuntime`. Without
    a token in the settings the SDK keeps what it read from `DAPR_API_TOKEN`.
    """
    send_api_token(settings.dapr.api_token)


def send_api_token(token: SecretStr | None) -> None:
    """`use_api_token` for a bare token (None: leave the SDK as it is)."""
    from dapr.conf import settings as sdk_settings

    if token is not None:
        # The SDK's settings object declares its attributes only at run time (from env).
        setattr(sdk_settings, "DAPR_API_TOKEN", token.get_secret_value())  # noqa: B010


def api_token_headers(settings: Settings) -> dict[str, str]:
    """The header for a plain HTTP call to daprd's API (none without a token)."""
    token = settings.dapr.api_token
    return {TOKEN_HEADER: token.get_secret_value()} if token is not None else {}


class AppTokenGuard:
    """ASGI middleware: only daprd (holding the app token) may call the app, probes excepted.

    Every path but `OPEN_PATHS` needs `dapr-api-token`: 401 without it, 403 with another value.
    Deny by default, so a new Dapr route (subscription, job, binding) is covered at once.
    """

    def __init__(self, app: ASGIApp, *, token: SecretStr) -> None:
        self.app = app
        self.expected = token.get_secret_value().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = next(
            (value for name, value in scope["headers"] if name == TOKEN_HEADER.encode()), None
        )
        if presented is None:
            response = JSONResponse({"detail": f"missing {TOKEN_HEADER} header"}, 401)
        elif not hmac.compare_digest(presented, self.expected):
            response = JSONResponse({"detail": f"wrong {TOKEN_HEADER}"}, 403)
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
