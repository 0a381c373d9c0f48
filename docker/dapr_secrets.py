"""Write the secrets files of the compose stack: `python3 docker/dapr_secrets.py`.

Each Dapr app's daprd reads its secrets with the `secretstores.local.file` component of
`components/` (a JSON file; `MODERATION_DAPR_SECRETS_FILE`): the review service's daprd from the
compose secret `dapr_secrets` (`.secrets/dapr-secrets.json`), the agent service's from
`dapr_agent_secrets` (`.secrets/dapr-agent-secrets.json`), the worker's from `dapr_worker_secrets`
(`.secrets/dapr-worker-secrets.json`). All are built here, so no password is written in the
repository. Standard library only: runs with any python3.

daprd's state store logs in as its own role, `moderation_dapr` (moderation/db/roles.py
`DAPR_STATE_ROLE`), never as the owner: it owns database `dapr_state` and may not connect to
`moderation`. Its password is generated once into `.secrets/postgres/dapr` (the compose secret
`db_dapr_password`), from which the postgres image's init script creates the role
(docker/postgres/init/10-dapr-state.sql), and goes into every JSON file's connection string (the
review and agent services keep their workflow state there, each under its own app id).

The configuration store (components/configstore-postgresql.yaml, `config-connection-string`)
reads the live configuration, table `moderation_config` of database `moderation`. Outside compose
it logs in as `moderation_config_reader` (moderation/db/roles.py `CONFIG_READER_ROLE`: SELECT on
that table only). Compose has no per-service roles: every compose service logs in as the owner
`moderation` and nothing runs the grants (`moderation.db.roles.apply_grants`), and the init script
runs before the services create the table, so a reader role could be granted nothing. Each
daprd's configuration store therefore logs in as the owner too, with the password compose itself
takes from `MODERATION_DB__PASSWORD` (export it before running this script, as for `docker
compose up`; after changing it, run the script again). The owner's password already reaches every
compose service that reads the database (the worker, the agent service, the review service), so
the daprd next to each adds no holder with other rights.

Kafka requires SASL/SCRAM (issue 11, "forged events"): each principal of
`moderation/kafka_auth.py` (and `nightly` and `mcp`, which may do nothing) gets a random
password in `.secrets/kafka/<principal>`, generated once and kept, mounted as the compose secret
`kafka_<principal>`: the broker formats its storage with all of them, each service gets only its
own, and each daprd's is in its JSON file (`kafka-sasl-password`, components/pubsub-kafka.yaml):
`review` for the review service's, `agent` for the agent service's, `worker` for the worker's.
The agent service's file also holds `llm-api-key`, vLLM's key (`MODERATION_LLM__API_KEY`, as
compose reads it), for its conversation component (components/conversation-llm.yaml).

The agent service and its daprd get Dapr tokens of their own (`.secrets/dapr-agent-tokens.env`,
read by compose as their `env_file`), generated once and kept: nothing else calls that daprd, and
the agent service, which hands submitted text to an LLM, never holds the tokens of the review
service's daprd (which would let it raise a moderator's decision on a review workflow). The worker
and its daprd likewise share an API token of their own (`.secrets/dapr-worker-tokens.env`); that
daprd has no app channel (it never calls the worker), so there is no app token.

The folders are private to you (0700); the files are 0644 because compose bind-mounts them as
they are and the containers run as their own non-root users.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / ".secrets" / "dapr-secrets.json"
# The agent service's daprd (docker-compose.yaml `agent-dapr`, the compose secret
# `dapr_agent_secrets`).
AGENT_OUTPUT = OUTPUT.parent / "dapr-agent-secrets.json"
# The worker's daprd (docker-compose.yaml `worker-dapr`, the compose secret `dapr_worker_secrets`).
WORKER_OUTPUT = OUTPUT.parent / "dapr-worker-secrets.json"
KAFKA_DIR = OUTPUT.parent / "kafka"
# The statestore component's secretKeyRef (components/statestore-postgresql.yaml).
SECRET_KEY = "dapr-state-connection-string"
# The configuration store's secretKeyRef (components/configstore-postgresql.yaml).
CONFIG_SECRET_KEY = "config-connection-string"
# The pub/sub component's saslPassword (components/pubsub-kafka.yaml): that daprd's principal's.
KAFKA_SECRET_KEY = "kafka-sasl-password"
# The agent's conversation component's key (components/conversation-llm.yaml): vLLM's API key,
# as compose reads it; only the agent service's daprd gets it.
LLM_SECRET_KEY = "llm-api-key"
LLM_API_KEY_ENV = "MODERATION_LLM__API_KEY"
# moderation/kafka_auth.py PRINCIPALS, and `nightly` and `mcp`: no ACL, each only lets the settings
# of the nightly job or the MCP server load (neither uses Kafka).
KAFKA_PRINCIPALS = (
    "admin",
    "api",
    "worker",
    "recorder",
    "review",
    "agent",
    "dispatcher",
    "nightly",
    "mcp",
)
# Each daprd's secrets file and the Kafka principal its pub/sub acts as.
DAPRD_SECRETS = {
    "review": (OUTPUT, "review"),
    "agent": (AGENT_OUTPUT, "agent"),
    "worker": (WORKER_OUTPUT, "worker"),
}
# The agent service's and its daprd's Dapr tokens (docker-compose.yaml `env_file`).
AGENT_TOKENS_FILE = OUTPUT.parent / "dapr-agent-tokens.env"
AGENT_TOKENS = ("DAPR_API_TOKEN", "APP_API_TOKEN")
# The worker's and its daprd's: the API token only (that daprd has no app channel).
WORKER_TOKENS_FILE = OUTPUT.parent / "dapr-worker-tokens.env"
WORKER_TOKENS = ("DAPR_API_TOKEN",)
# The compose stack's PostgreSQL (docker-compose.yaml: the postgres service and its init script):
# `OWNER` owns `APP_DATABASE` (`moderation`), Dapr's `USER` owns `DATABASE`.
HOST, PORT, OWNER, USER, DATABASE = "postgres", 5432, "moderation", "moderation_dapr", "dapr_state"
APP_DATABASE = "moderation"
DAPR_DB_PASSWORD_FILE = OUTPUT.parent / "postgres" / "dapr"
# The owner's password, as compose reads it (the `db_password` secret, `MODERATION_DB__PASSWORD`).
OWNER_PASSWORD_ENV = "MODERATION_DB__PASSWORD"


def libpq_value(value: str) -> str:
    """A value for a libpq `key=value` connection string, quoted when it needs to be."""
    if value and not any(char in value for char in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connection_string(password: str, user: str = USER, database: str = DATABASE) -> str:
    """A libpq DSN to the compose stack's PostgreSQL (default: Dapr's role on `dapr_state`)."""
    return (
        f"host={HOST} port={PORT} user={libpq_value(user)} password={libpq_value(password)} "
        f"dbname={libpq_value(database)} sslmode=disable"
    )


def config_connection_string(owner_password: str) -> str:
    """The configuration store's DSN: the owner on `moderation` (compose has no reader role)."""
    return connection_string(owner_password, OWNER, APP_DATABASE)


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


def write_secrets(
    password: str,
    output: Path = OUTPUT,
    kafka_password: str = "",
    owner_password: str = "",
    llm_api_key: str = "",
) -> Path:
    """The JSON file a daprd reads; `password` is Dapr's database role's, `kafka_password` its
    pub/sub principal's, `owner_password` the owner's (its configuration store's login),
    `llm_api_key` vLLM's (the agent's conversation component)."""
    document = {SECRET_KEY: connection_string(password)}
    if owner_password:
        document[CONFIG_SECRET_KEY] = config_connection_string(owner_password)
    if kafka_password:
        document[KAFKA_SECRET_KEY] = kafka_password
    if llm_api_key:
        document[LLM_SECRET_KEY] = llm_api_key
    _write(output, json.dumps(document, indent=2) + "\n")
    return output


def dapr_tokens(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """A Dapr app pair's tokens `names`, as `NAME=value` lines: kept when written before, each
    missing one generated (URL-safe: nothing a compose env file would need quoted)."""
    found: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            name, separator, value = line.partition("=")
            if separator and name.strip() in names and value.strip():
                found[name.strip()] = value.strip()
    tokens = {name: found.get(name) or secrets.token_urlsafe(32) for name in names}
    if tokens != found:
        _write(path, "".join(f"{name}={value}\n" for name, value in tokens.items()))
    return tokens


def agent_tokens(path: Path = AGENT_TOKENS_FILE) -> dict[str, str]:
    """The agent service's and its daprd's tokens (`dapr_tokens`)."""
    return dapr_tokens(path, AGENT_TOKENS)


def worker_tokens(path: Path = WORKER_TOKENS_FILE) -> dict[str, str]:
    """The worker's and its daprd's API token (`dapr_tokens`)."""
    return dapr_tokens(path, WORKER_TOKENS)


def main() -> int:
    owner_password = os.environ.get(OWNER_PASSWORD_ENV, "")
    if not owner_password:
        print(  # noqa: T201 - a CLI
            f"export {OWNER_PASSWORD_ENV} (the compose stack's database password) first: "
            "the Dapr configuration store logs in with it",
            file=sys.stderr,
        )
        return 2
    kafka = kafka_passwords()
    password = generated_password(DAPR_DB_PASSWORD_FILE)
    llm_key = os.environ.get(LLM_API_KEY_ENV, "")
    for app, (output, principal) in DAPRD_SECRETS.items():
        key = llm_key if app == "agent" else ""
        print(write_secrets(password, output, kafka[principal], owner_password, key))  # noqa: T201 - a CLI
    agent_tokens()
    print(AGENT_TOKENS_FILE)  # noqa: T201 - a CLI
    worker_tokens()
    print(WORKER_TOKENS_FILE)  # noqa: T201 - a CLI
    print(KAFKA_DIR)  # noqa: T201 - a CLI
    print(DAPR_DB_PASSWORD_FILE)  # noqa: T201 - a CLI
    return 0


if __name__ == "__main__":
    sys.exit(main())
