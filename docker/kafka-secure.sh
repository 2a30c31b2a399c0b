#!/bin/bash
# Starts one node of docker/compose.yml's secure Apache Kafka (the kafka-N services' entrypoint).
#
# Every KAFKA_* variable becomes a server property, as the apache/kafka image does it (KAFKA_
# dropped, lower case, "___" -> "-", "__" -> "_", "_" -> "."). The secrets (Docker secrets,
# files under /run/secrets) never go through the environment of `docker inspect`: the JAAS lines
# with the admin's and the controllers' passwords are written here into the node's config. On
# the first start the node's log directory is formatted with the admin's SCRAM credential (KRaft
# takes SCRAM credentials only then); the kafka-setup service adds the other principals.
set -euo pipefail
secret() { head -n1 "/run/secrets/$1" | tr -d '\r\n'; }
admin=$(secret gc-admin-password)
controller=$(secret kafka-controller-password)
config=/tmp/server.properties
umask 077

{
    while IFS='=' read -r name value; do
        case "$name" in KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS) continue ;; esac
        key=${name#KAFKA_}
        key=${key,,}; key=${key//___/-}; key=${key//__/@}; key=${key//_/.}; key=${key//@/_}
        printf '%s=%s\n' "$key" "$value"
    done < <(env | grep '^KAFKA_')
    echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"$admin\";"
    echo "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"controller\" password=\"$controller\" user_controller=\"$controller\";"
} > "$config"

if [[ ! -f "$KAFKA_LOG_DIRS/meta.properties" ]]; then
    /opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$config" \
        --add-scram "SCRAM-SHA-512=[name=admin,password=$admin]"
fi

# The health check's client: the admin, over TLS.
cat > /tmp/admin.properties <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin";
ssl.truststore.type=PEM
ssl.truststore.location=/run/secrets/kafka-ca
PROPERTIES

exec /opt/kafka/bin/kafka-server-start.sh "$config"
