"""Outbound webhooks, the contract: event types, signatures, and which targets may be called.

Deliveries follow the Standard Webhooks scheme (https://www.standardwebhooks.com): each request
carries `webhook-id` (the delivery's id: the same on every attempt, receivers deduplicate on
it), `webhook-timestamp` (the attempt's Unix time) and `webhook-signature` (`v1,<base64
HMAC-SHA256 of "<id>.<timestamp>.<body>">`, several separated by spaces while a rotated secret
still signs). Signing is the `standardwebhooks` library's, so what we send is what its `verify`
accepts.

Targets are refused when they resolve to loopback, private, link-local, reserved, multicast or
other non-global addresses (SSRF: a webhook must not reach into the platform's own network),
unless `webhooks.allow_private_targets`. The check runs at registration and again before each
attempt, whose request then goes to the address that was checked (DNS may change in between).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from standardwebhooks import Webhook

from moderation.settings import Settings, TopicSettings

EventType = Literal["post.verdict", "review.decided", "author.actioned", "report.resolved"]
EVENT_TYPES: tuple[EventType, ...] = (
    "post.verdict",
    "review.decided",
    "author.actioned",
    "report.resolved",
)
SECRET_PREFIX = "whsec_"  # the scheme's marker, not a secret: pragma: allowlist secret
SECRET_BYTES = 32
MAX_URL_CHARS = 2_048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses the name resolves to (tests pass their own).
Resolver = Callable[[str, int], Awaitable[list[str]]]


def event_types_by_topic(topics: TopicSettings) -> dict[str, EventType]:
    """The webhook event type of each topic the dispatcher reads."""
    return {
        topics.verdicts: "post.verdict",
        topics.review_decisions: "review.decided",
        topics.authors_actioned: "author.actioned",
        topics.reports_resolved: "report.resolved",
    }


def new_secret() -> str:
    """A signing secret, `whsec_<base64 of 32 random bytes>` (the scheme's format)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_headers(
    *, delivery_id: str, body: bytes, signing_secrets: Sequence[str], at: datetime
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt, one signature per secret.

    Raises:
        ValueError: no secret to sign with.
    """
    if not signing_secrets:
        raise ValueError("a webhook needs at least one signing secret")
    text = body.decode()
    signatures = [Webhook(secret).sign(delivery_id, at, text) for secret in signing_secrets]
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


class TargetRefused(ValueError):
    """A webhook URL that may not be called; the message says why."""


def parse_target(url: str, *, require_https: bool) -> SplitResult:
    """Check a webhook URL's form: http(s), a host, no credentials, no fragment.

    Raises:
        TargetRefused: with the reason.
    """
    if len(url) > MAX_URL_CHARS:
        raise TargetRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port out of range
    except ValueError as error:
        raise TargetRefused(f"not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused(f"the URL must be https (got scheme {parts.scheme!r})")
    if require_https and parts.scheme != "https":
        raise TargetRefused("the URL must be https (http is allowed only in development)")
    if not parts.hostname:
        raise TargetRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("the URL must not carry credentials (user:password@)")
    if parts.fragment:
        raise TargetRefused("the URL must not have a fragment (#...)")
    if port == 0:
        raise TargetRefused("the URL's port must not be 0")
    return parts


def refusal(address: IPAddress) -> str | None:
    """Why an address may not be a webhook target (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 is judged as that IPv4 address.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is not None:
            return refusal(embedded)
    for reason, flagged in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flagged:
            return f"{reason} address {address}"
    if not address.is_global:
        return f"non-public address {address}"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (the system's resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_target(
    url: str,
    *,
    require_https: bool,
    allow_private: bool,
    resolver: Resolver = system_resolver,
) -> tuple[SplitResult, list[IPAddress]]:
    """Check a webhook URL and resolve its host; every address must be allowed.

    Raises:
        TargetRefused: a malformed URL, a host that does not resolve, or an address refused
            (any of them: the name could be answered with the refused one next time).
    """
    parts = parse_target(url, require_https=require_https)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolve(host, port, resolver)
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise TargetRefused(
                    f"the host {host!r} resolves to a {reason}: refused (a webhook may not "
                    "reach private networks; see webhooks.allow_private_targets)"
                )
    return parts, addresses


async def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        found = await resolver(host, port)
    except OSError as error:
        raise TargetRefused(f"the host {host!r} does not resolve ({error})") from None
    addresses = [ipaddress.ip_address(item.split("%", 1)[0]) for item in found]
    if not addresses:
        raise TargetRefused(f"the host {host!r} does not resolve")
    return addresses


def https_required(settings: Settings) -> bool:
    """Whether endpoint URLs must be https under `settings`."""
    return settings.webhooks.https_required(settings.environment)
