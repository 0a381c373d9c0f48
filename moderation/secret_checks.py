"""Which secrets of a settings tree still hold a development or placeholder value.

`Settings` refuses to start outside development while any is found (`settings.py`). The walk
is generic: every `SecretStr` field of every section is checked, so a secret added later (Kafka
credentials, a key pepper) is covered without touching this module, and a database URL given
whole (`db.url_override`) has its password checked like `db.password`.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

# Values nobody should deploy, whatever the secret (compared case-insensitively, stripped).
PLACEHOLDER_SECRETS = frozenset(
    {
        "",
        "changeme",
        "change-me",
        "change_me",
        "changeit",
        "placeholder",
        "password",
        "secret",
        "token",
        "dev",
        "development",
        "test",
        "example",
        "default",
        "xxx",
        "todo",
    }
)


def _env_name(prefix: str, path: tuple[str, ...]) -> str:
    return prefix + "__".join(part.upper() for part in path)


def _is_development_value(value: str, refused: frozenset[str]) -> bool:
    return value.strip().lower() in PLACEHOLDER_SECRETS or value in refused


def _secret_fields(
    model: BaseModel, path: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], SecretStr, SecretStr | None]]:
    """(path, value, the field's static default) of every SecretStr in the tree."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            default = field.default if isinstance(field.default, SecretStr) else None
            yield (*path, name), value, default
        elif isinstance(value, BaseModel):
            yield from _secret_fields(value, (*path, name))


def url_password(url: str) -> str | None:
    """The password in a URL (`scheme://user:password@host/...`), None when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password is not None else None


def development_secrets(
    settings: BaseModel,
    *,
    refused: frozenset[str],
    env_prefix: str = "MODERATION_",
    urls: dict[tuple[str, ...], str | None] | None = None,
) -> list[str]:
    """The environment variables of secrets that hold a development or placeholder value.

    Args:
        settings: the settings tree to walk.
        refused: known development values (the local stack's credentials).
        env_prefix: the settings' environment prefix, for the names in the answer.
        urls: URLs given whole, by settings path, whose password is checked too.

    A secret is refused when it is empty, a known placeholder, one of `refused`, or still the
    static default of its field (defaults are development values by construction).
    """
    found: list[str] = []
    for path, value, default in _secret_fields(settings, ()):
        secret = value.get_secret_value()
        at_default = default is not None and secret == default.get_secret_value()
        if at_default or _is_development_value(secret, refused):
            found.append(_env_name(env_prefix, path))
    for path, url in (urls or {}).items():
        password = url_password(url) if url else None
        if password is not None and _is_development_value(password, refused):
            found.append(_env_name(env_prefix, path))
    return found
