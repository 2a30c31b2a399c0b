#!/bin/bash
# The kafka-setup service of docker/compose.yml (one-shot, as the admin, once every node is
# healthy): the SCRAM credential of each principal whose password is a secret here, then the
# ACLs of docker/acls.args (streams/dev/secure.py's table: `python -m streams.dev.secure --acl-args`).
# Both are idempotent: a second run changes nothing but the credentials' salts.
set -euo pipefail
secret() { head -n1 "/run/secrets/$1" | tr -d '\r\n'; }
umask 077
cat > /tmp/admin.properties <<PROPERTIES
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$(secret gc-admin-password)";
ssl.truststore.type=PEM
ssl.truststore.location=/run/secrets/kafka-ca
PROPERTIES
bootstrap=kafka-1:9092,kafka-2:9092,kafka-3:9092

for file in /run/secrets/gc-*-password; do
    principal=${file#/run/secrets/gc-}
    principal=${principal%-password}
    /opt/kafka/bin/kafka-configs.sh --bootstrap-server "$bootstrap" --command-config /tmp/admin.properties \
        --alter --entity-type users --entity-name "$principal" \
        --add-config "SCRAM-SHA-512=[password=$(secret "gc-$principal-password")]"
done

while read -r -a args; do
    [[ ${#args[@]} -eq 0 || ${args[0]} == \#* ]] && continue
    /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap" --command-config /tmp/admin.properties \
        --add --force "${args[@]}"
done < /etc/greenchannel/acls.args
