"""TLS to PostgreSQL (issue 11): `db.sslmode` and `db.sslrootcert` reach psycopg."""

from __future__ import annotations

import pytest

from moderation.db.engine import connect_args
from moderation.settings import Settings


def test_the_default_prefers_tls_and_names_no_ca() -> None:
    args = connect_args(Settings())

    assert args == {"connect_timeout": 5, "sslmode": "prefer"}


def test_production_settings_require_a_verified_certificate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODERATION_DB__SSLMODE", "verify-full")
    monkeypatch.setenv("MODERATION_DB__SSLROOTCERT", "/etc/moderation/db-ca/ca.crt")

    args = connect_args(Settings())

    assert args["sslmode"] == "verify-full"
    assert args["sslrootcert"] == "/etc/moderation/db-ca/ca.crt"


def test_an_unknown_sslmode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODERATION_DB__SSLMODE", "verify-everything")

    with pytest.raises(ValueError, match="sslmode"):
        Settings()
