"""No secret in any file of the repository (tracked, or new and not ignored).

Runtime secrets live outside git: the local stack generates its Dapr tokens and the Dapr secrets
file into `.stack/` (ignored), Kubernetes and Compose take theirs from secrets. The only fixed
credentials are the documented development defaults of `moderation/settings.py`
(`DEV_DB_PASSWORD` for the loopback-only PostgreSQL cluster the stack creates itself,
`DEV_LLM_API_KEY` for the loopback llama.cpp server); the settings refuse both outside
development.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from moderation.settings import DEV_DB_PASSWORD, DEV_LLM_API_KEY, PROJECT_ROOT

PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_?secret_?access_?key\W{0,5}[A-Za-z0-9/+=]{40}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "OpenAI-style key": re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{32,}"),
    "bearer token": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{32,}=*"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\."),
    # This project's API keys: mod_<12 hex>_<256-bit urlsafe secret>.
    "moderation API key": re.compile(r"\bmod_[0-9a-f]{12}_[A-Za-z0-9_-]{40,}"),
    # A quoted literal assigned to something named like a secret (not checked under tests/,
    # whose fixtures need fake credentials; every other pattern is).
    "credential literal": re.compile(
        r"(?i)\b\w*(?:password|passwd|secret|api_?key|token)\w*[\"']?\s*[:=]\s*"
        r"(?:SecretStr\()?[\"']([^\"'\s]{4,})[\"']"
    ),
}
# The documented development defaults (see the module docstring).
ALLOWED_LITERALS = {DEV_DB_PASSWORD, DEV_LLM_API_KEY}
# A line that must hold a secret-like example says so (detect-secrets' marker).
ALLOW_MARKER = "pragma: allowlist secret"
# Names such as "dapr-api-token" (a header) or "dapr-state-connection-string" (a secret's key).
NAME = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")
# This file: its examples of what the scanner finds.
SELF = "tests/unit/test_no_secrets.py"


def repository_files() -> list[str]:
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to scan")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({name.decode() for name in listed.split(b"\0") if name})


def findings_in(text: str, *, literals: bool = True) -> list[tuple[int, str]]:
    """(line number, what) for every secret-like thing in `text` (`literals`: check quoted
    literals assigned to secret-named things too)."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if ALLOW_MARKER in line:
            continue
        for what, pattern in PATTERNS.items():
            if what == "credential literal" and not literals:
                continue
            for match in pattern.finditer(line):
                if what == "credential literal" and _harmless(match.group(1)):
                    continue
                found.append((number, what))
    return found


def _harmless(value: str) -> bool:
    # The dev defaults, placeholders, references, and names rather than values.
    return (
        value in ALLOWED_LITERALS
        or value.startswith(("$", "<", "{", "/", "*"))
        or value.isupper()
        or NAME.fullmatch(value) is not None
    )


def test_no_file_of_the_repository_holds_a_secret() -> None:
    problems = []
    for name in repository_files():
        path = PROJECT_ROOT / name
        if name == SELF or not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (images, models)
        text = data.decode("utf-8", errors="replace")
        found = findings_in(text, literals=not name.startswith("tests/"))
        problems += [f"{name}:{line}: {what}" for line, what in found]
    assert not problems, "secret-like content (rotate it, then remove it):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("-----BEGIN RSA PRIVATE KEY-----", "private key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
        ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AWS access key id"),
        (
            'AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
            "AWS secret access key",
        ),
        ("curl -H 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123456789'", "bearer token"),
        ("key = 'mod_0123456789ab_" + "A" * 43 + "'", "moderation API key"),
        ('password = "hunter2-prod"', "credential literal"),
        ("DB_PASSWORD: 'Correct-Horse-9'", "credential literal"),
        ('{"api_key": "live-4f9a"}', "credential literal"),
        ('token=SecretStr("abcd1234")', "credential literal"),
    ],
)
def test_the_scanner_finds(line: str, what: str) -> None:
    assert (1, what) in findings_in(line)


@pytest.mark.parametrize(
    "line",
    [
        f'DEV_DB_PASSWORD = "{DEV_DB_PASSWORD}"',
        f'DEV_LLM_API_KEY = "{DEV_LLM_API_KEY}"',
        'headers = {"Authorization": f"Bearer {key}"}',
        'curl -H "Authorization: Bearer $KEY"',
        'password = os.environ["MODERATION_DB__PASSWORD"]',
        'password: "${POSTGRES_PASSWORD}"',
        'api_key = "<your key>"',
        'token = "DAPR_API_TOKEN"',
        'TOKEN_HEADER = "dapr-api-token"',
        "headers = {'Authorization': 'Bearer mod_000000000000_nope'}",
        'password = "x"  # pragma: allowlist secret',
    ],
)
def test_the_scanner_lets_references_and_dev_defaults_pass(line: str) -> None:
    assert findings_in(line) == []
