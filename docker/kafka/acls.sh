#!/bin/bash
# One-shot set-up after the broker of docker/compose.yaml is up: the event topics
# tongban.events.* (TONGBAN_KAFKA_TOPIC_PREFIX) belong to the nodes' principal alone. With
# allow.everyone.if.no.acl.found=false, no other principal may read, write or describe
# them; departments get events through the exchange (Subscribe), never from Kafka.
set -euo pipefail
umask 077

principal=User:tongban-node
prefix=tongban.events.

password=$(head -n 1 /run/secrets/kafka_admin_password)
config=$(mktemp)
cat > "$config" <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$password";
ssl.truststore.type=PEM
ssl.truststore.location=/run/secrets/kafka_ca
PROPERTIES

acls() {
    /opt/kafka/bin/kafka-acls.sh --bootstrap-server kafka:9092 --command-config "$config" "$@"
}

# The relay produces (idempotently), the feeds consume by assignment (no consumer group),
# and the nodes create and describe their topics: all of it on the prefix, nothing else.
acls --add --allow-principal "$principal" --operation All \
    --topic "$prefix" --resource-pattern-type prefixed
acls --list --topic "$prefix" --resource-pattern-type prefixed
rm -f "$config"
