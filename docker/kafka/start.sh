#!/bin/bash
# Starts the broker of docker/compose.yaml: formats the KRaft storage on first start with
# the two SCRAM users (admin, and tongban-node for the exchange's nodes), adds the broker's
# own login to its settings, and writes the admin client settings that the health check
# uses. Passwords come from the compose secrets only, never from the environment.
set -euo pipefail
umask 077

secrets=/run/secrets
work=/tmp/tongban-kafka
mkdir -p "$work"

read_password() {
    local value
    value=$(head -n 1 "$secrets/$1")
    # They go into a JAAS string and a --add-scram argument unquoted.
    if [[ ! $value =~ ^[A-Za-z0-9_-]{16,}$ ]]; then
        echo "secret $1: use 16 or more letters, digits, '-' or '_' (openssl rand -hex 32)" >&2
        exit 1
    fi
    printf '%s' "$value"
}
jaas() {
    printf 'org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";' "$1" "$2"
}

admin_password=$(read_password kafka_admin_password)
node_password=$(read_password kafka_node_password)

{
    cat /etc/tongban-kafka/server.properties
    echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas admin "$admin_password")"
} > "$work/server.properties"

cat > "$work/admin.properties" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$(jaas admin "$admin_password")
ssl.truststore.type=PEM
ssl.truststore.location=$secrets/kafka_ca
PROPERTIES

# Only the first start formats; the users then live in the cluster metadata (rotate a
# password with kafka-configs.sh --alter --add-config, docs/deploy.md).
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted \
    --cluster-id "$KAFKA_CLUSTER_ID" --config "$work/server.properties" \
    --add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]" \
    --add-scram "SCRAM-SHA-512=[name=tongban-node,password=$node_password]"

exec /opt/kafka/bin/kafka-server-start.sh "$work/server.properties"
