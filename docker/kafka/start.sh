#!/usr/bin/env bash
# The compose stack's broker with SASL/SCRAM and ACLs, as the local stack runs it
# (moderation/devtools/stack/kafka.py): clients authenticate with SCRAM-SHA-512 on the client listener and
# are authorised by the ACLs the `topics` service creates (moderation/kafka_auth.py); the KRaft
# controller listener is on loopback with SASL/PLAIN for the broker's own `admin`.
#
# Non-secret settings come from KAFKA_* variables (KAFKA_FOO_BAR=x -> foo.bar=x; `__` -> `_`,
# `___` -> `-`); the passwords from the compose secrets /run/secrets/kafka_<principal>
# (python3 docker/dapr_secrets.py writes them into .secrets/kafka/). The storage is formatted
# once with every principal's SCRAM credentials; it refuses to start on storage formatted with
# other credentials rather than lose the topics silently.
set -euo pipefail

SECRETS=/run/secrets
PRINCIPALS=(admin api worker recorder review agent dispatcher nightly mcp)
MECHANISM=SCRAM-SHA-512
DATA_DIR=${KAFKA_LOG_DIRS:?KAFKA_LOG_DIRS is required}
RUNTIME=/tmp/moderation-kafka
CONFIG=$RUNTIME/server.properties
CLIENT_CONFIG=$RUNTIME/admin-client.properties  # for the healthcheck

password() {
  local file=$SECRETS/kafka_$1
  [[ -s $file ]] || { echo "missing secret $file: run python3 docker/dapr_secrets.py" >&2; exit 1; }
  local value
  value=$(<"$file")
  # The passwords go into JAAS strings and tool arguments: generated ones are URL-safe.
  [[ $value =~ ^[A-Za-z0-9_-]+$ ]] || { echo "$file: use [A-Za-z0-9_-] only" >&2; exit 1; }
  printf '%s' "$value"
}

umask 077
mkdir -p "$RUNTIME"
admin=$(password admin)

{
  # KAFKA_* environment variables as properties (the image's own convention).
  while IFS='=' read -r name value; do
    case $name in
      KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | KAFKA_LOG4J_OPTS | KAFKA_JMX_OPTS | KAFKA_GC_LOG_OPTS) continue ;;
    esac
    key=${name#KAFKA_}
    key=${key,,}
    key=${key//___/-}
    key=${key//__/@}
    key=${key//_/.}
    key=${key//@/_}
    printf '%s=%s\n' "$key" "$value"
  done < <(env | grep -E '^KAFKA_[A-Z0-9_]+=' | sort)
  echo "sasl.enabled.mechanisms=$MECHANISM"
  echo "sasl.mechanism.inter.broker.protocol=$MECHANISM"
  echo "sasl.mechanism.controller.protocol=PLAIN"
  echo "listener.name.controller.sasl.enabled.mechanisms=PLAIN"
  echo "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"$admin\" user_admin=\"$admin\";"
  echo "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$admin\";"
  echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
  echo "super.users=User:admin"
  echo "allow.everyone.if.no.acl.found=false"
} >"$CONFIG"

cat >"$CLIENT_CONFIG" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=$MECHANISM
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
PROPERTIES

# What the storage is formatted with: a digest of every principal's credentials.
expected=$(for principal in "${PRINCIPALS[@]}"; do echo "$principal:$(password "$principal")"; done | sha256sum | cut -d' ' -f1)
marker=$DATA_DIR/.moderation-scram-credentials
if [[ -f $DATA_DIR/meta.properties ]]; then
  if [[ ! -f $marker || $(<"$marker") != "$expected" ]]; then
    echo "kafka: the storage in $DATA_DIR was formatted without these SCRAM credentials (an older" >&2
    echo "stack, or regenerated .secrets/kafka/); remove the volume: docker compose down -v" >&2
    exit 1
  fi
else
  users=()
  for principal in "${PRINCIPALS[@]}"; do
    users+=(--add-scram "$MECHANISM=[name=$principal,password=$(password "$principal")]")
  done
  /opt/kafka/bin/kafka-storage.sh format --cluster-id "${CLUSTER_ID:?CLUSTER_ID is required}" \
    --config "$CONFIG" "${users[@]}"
  printf '%s' "$expected" >"$marker"
fi

exec /opt/kafka/bin/kafka-server-start.sh "$CONFIG"
