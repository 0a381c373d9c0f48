"""Write the secrets files of the compose stack: `python3 docker/dapr_secrets.py`.

Each Dapr app's daprd reads its secrets with the `secretstores.local.file` component of
`components/` (a JSON file; `MODERATION_DAPR_SECRETS_FILE`): the review service's daprd from the
compose secret `dapr_secrets` (`.secrets/dapr-secrets.json`), the agent service's from
`dapr_agent_secrets` (`.secrets/dapr-agent-secrets.json`). Both are built here, so no password is
written in the repository. Standard library only: runs with any python3.

daprd's state store logs in as its own role, `moderation_dapr` (moderation/db/roles.py
`DAPR_STATE_ROLE`), never as the owner: it owns database `dapr_state` and may not connect to
`moderation`. Its password is generated once into `.secrets/postgres/dapr` (the compose secret
`db_dapr_password`), from which the postgres image's init script creates the role
(docker/postgres/init/10-dapr-state.sql), and goes into both JSON files' connection string (both
apps keep their workflow state there, each under its own app id).

Kafka requires SASL/SCRAM (issue 11, "forged events"): each principal of
`moderation/kafka_auth.py` (and `nightly`, which may do nothing) gets a random password in
`.secrets/kafka/<principal>`, generated once and kept, mounted as the compose secret
`kafka_<principal>`: the broker formats its storage with all of them, each service gets only its
own, and each daprd's is in its JSON file (`kafka-sasl-password`, components/pubsub-kafka.yaml):
`review` for the review service's, `agent` for the agent service's.

The agent service and its daprd get Dapr tokens of their own (`.secrets/dapr-agent-tokens.env`,
read by compose as their `env_file`), generated once and kept: nothing else calls that daprd, and
the agent service, which hands submitted text to an LLM, never holds the tokens of the review
service's daprd (which would let it raise a moderator's decision on a review workflow).

The folders are private to you (0700); the files are 0644 because compose bind-mounts them as
they are and the containers run as their own non-root users.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / ".secrets" / "dapr-secrets.json"
# The agent service's daprd (docker-compose.yaml `agent-dapr`, the compose secret
# `dapr_agent_secrets`).
AGENT_OUTPUT = OUTPUT.parent / "dapr-agent-secrets.json"
KAFKA_DIR = OUTPUT.parent / "kafka"
# The statestore component's secretKeyRef (components/statestore-postgresql.yaml).
SECRET_KEY = "dapr-state-connection-string"
# The pub/sub component's saslPassword (components/pubsub-kafka.yaml): that daprd's principal's.
KAFKA_SECRET_KEY = "kafka-sasl-password"
# moderation/kafka_auth.py PRINCIPALS, and `nightly`: no ACL, it only lets the job's settings load.
KAFKA_PRINCIPALS = ("admin", "api", "worker", "recorder", "review", "agent", "nightly")
# Each daprd's secrets file and the Kafka principal its pub/sub acts as.
DAPRD_SECRETS = {"review": (OUTPUT, "review"), "agent": (AGENT_OUTPUT, "agent")}
# The agent service's and its daprd's Dapr tokens (docker-compose.yaml `env_file`).
AGENT_TOKENS_FILE = OUTPUT.parent / "dapr-agent-tokens.env"
AGENT_TOKENS = ("DAPR_API_TOKEN", "APP_API_TOKEN")
# The compose stack's PostgreSQL (docker-compose.yaml: the postgres service and its init script):
# `OWNER` owns `moderation`, Dapr's `USER` owns `DATABASE`.
HOST, PORT, OWNER, USER, DATABASE = "postgres", 5432, "moderation", "moderation_dapr", "dapr_state"
DAPR_DB_PASSWORD_FILE = OUTPUT.parent / "postgres" / "dapr"


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


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    staging = path.with_suffix(".tmp")
    staging.write_text(text)
    staging.chmod(0o644)
    staging.replace(path)


def generated_password(path: Path) -> str:
    """The password in `path`: kept when written before, else generated (URL-safe)."""
    if not path.is_file() or not path.read_text().strip():
        _write(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def kafka_passwords(directory: Path = KAFKA_DIR) -> dict[str, str]:
    """Each principal's password (`generated_password`)."""
    return {principal: generated_password(directory / principal) for principal in KAFKA_PRINCIPALS}


def write_secrets(password: str, output: Path = OUTPUT, kafka_password: str = "") -> Path:
    """The JSON file a daprd reads; `password` is Dapr's database role's, `kafka_password` its
    pub/sub principal's."""
    document = {SECRET_KEY: connection_string(password)}
    if kafka_password:
        document[KAFKA_SECRET_KEY] = kafka_password
    _write(output, json.dumps(document, indent=2) + "\n")
    return output


def agent_tokens(path: Path = AGENT_TOKENS_FILE) -> dict[str, str]:
    """The agent pair's Dapr tokens, as `NAME=value` lines: kept when written before, each
    missing one generated (URL-safe: nothing a compose env file would need quoted)."""
    found: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, separator, value = line.partition("=")
            if separator and name.strip() in AGENT_TOKENS and value.strip():
                found[name.strip()] = value.strip()
    tokens = {name: found.get(name) or secrets.token_urlsafe(32) for name in AGENT_TOKENS}
    if tokens != found:
        _write(path, "".join(f"{name}={value}\n" for name, value in tokens.items()))
    return tokens


def main() -> int:
    kafka = kafka_passwords()
    password = generated_password(DAPR_DB_PASSWORD_FILE)
    for output, principal in DAPRD_SECRETS.values():
        print(write_secrets(password, output, kafka[principal]))  # noqa: T201 - a CLI
    agent_tokens()
    print(AGENT_TOKENS_FILE)  # noqa: T201 - a CLI
    print(KAFKA_DIR)  # noqa: T201 - a CLI
    print(DAPR_DB_PASSWORD_FILE)  # noqa: T201 - a CLI
    return 0


if __name__ == "__main__":
    sys.exit(main())
