"""Write the Dapr secrets file of the compose stack: `python3 docker/dapr_secrets.py`.

The review service's daprd reads its secrets with the `secretstores.local.file` component of
`components/` (a JSON file; `MODERATION_DAPR_SECRETS_FILE`). Compose mounts this file as the
secret `dapr_secrets`; it is built here from `MODERATION_DB__PASSWORD`, so the password is typed
once and written nowhere in the repository. Standard library only: runs with any python3.

The folder is private to you (0700); the file is 0644 because compose bind-mounts it as it is
and daprd runs as its own non-root user in the container.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / ".secrets" / "dapr-secrets.json"
# The statestore component's secretKeyRef (components/statestore-postgresql.yaml).
SECRET_KEY = "dapr-state-connection-string"
# The compose stack's PostgreSQL (docker-compose.yaml: the postgres service and its init script).
HOST, PORT, USER, DATABASE = "postgres", 5432, "moderation", "dapr_state"


def libpq_value(value: str) -> str:
    """A value for a libpq `key=value` connection string, quoted when it needs to be."""
    if value and not any(char in value for char in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connection_string(password: str) -> str:
    return (
        f"host={HOST} port={PORT} user={USER} password={libpq_value(password)} "
        f"dbname={DATABASE} sslmode=disable"
    )


def write_secrets(password: str, output: Path = OUTPUT) -> Path:
    output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    output.parent.chmod(0o700)
    staging = output.with_suffix(".tmp")
    staging.write_text(json.dumps({SECRET_KEY: connection_string(password)}, indent=2) + "\n")
    staging.chmod(0o644)
    staging.replace(output)
    return output


def main() -> int:
    password = os.environ.get("MODERATION_DB__PASSWORD", "")
    if not password:
        print("export MODERATION_DB__PASSWORD first (the compose stack's database password)")  # noqa: T201 - a CLI
        return 1
    print(write_secrets(password))  # noqa: T201 - a CLI
    return 0


if __name__ == "__main__":
    sys.exit(main())
