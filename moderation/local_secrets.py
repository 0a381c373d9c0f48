"""Secrets of the local stack: generated once into its state dir, never configured.

The development stack's daprd tokens and Kafka passwords come from here, so that the stack, the
services it starts and the commands run next to it agree without any configuration, and no
secret is committed. Deployed environments set every secret explicitly (`Settings` refuses to
start otherwise).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def local_secret(path: Path) -> str:
    """The secret in `path`, generated there first (256 random bits, created with mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text().strip()
        if secret:
            return secret
        descriptor = os.open(path, os.O_WRONLY | os.O_TRUNC)  # left empty by a crash
    secret = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret)
    return secret
