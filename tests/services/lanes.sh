#!/usr/bin/env bash
# The Apache Kafka lanes of `make test`, run after its default lane (embedded Tansu + SQLite,
# where every test marked `kafka` is skipped):
#
#   kafka   GC_TEST_BROKER=kafka: 1 node, the worker with processing_guarantee=exactly_once and
#           RocksDB tables (GC_TEST_STORE=rocksdb://; the other lanes keep memory tables),
#           its projections on PostgreSQL (tests/services/postgres.sh) when that starts, else
#           on SQLite. The integration tests (tests/integration/, test_kafka_cluster.py among
#           them) and tests/unit/test_db.py (on SQLite and PostgreSQL).
#   kafka3  GC_TEST_BROKER=kafka3: 3 nodes, replication factor 3, exactly_once, the workers with
#           one standby replica (GC_STANDBY_REPLICAS=1, set by tests/support/system.py). The fault tests
#           (tests/faults/test_faults.py, run first, with -s so their figures show), then the
#           integration tests (tests/integration/).
#   secure  GC_TEST_BROKER=kafka-secure: 1 node with SASL_SSL (SCRAM-SHA-512) and ACLs, every
#           component as its own principal, exactly_once. tests/faults/test_security.py (marked
#           `secure`, skipped in every other lane); its worker-kill test on 3 secure nodes of its own.
#
#   bash tests/services/lanes.sh [kafka] [kafka3] [secure]     (no argument: all three, in that order)
#
# A lane that cannot run here (no java 17+ or no mvn on PATH) says why and is skipped. A lane
# that runs and fails - including the Kafka jars failing to resolve from Maven Central - makes
# the script exit non-zero, after the other lanes have run. Each lane is bounded in time
# (GC_LANE_TIMEOUT seconds, default 2400) and prints pytest's own summary line.
# Environment: PYTHON (default .venv/bin/python, else python3); GC_TEST_DATABASE_URL, if set,
# is used as is instead of starting PostgreSQL; GC_LANES_PYTEST_ARGS is added to every pytest.
set -uo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-}
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
LANE_TIMEOUT=${GC_LANE_TIMEOUT:-2400}
read -r -a EXTRA <<<"${GC_LANES_PYTEST_ARGS:-}"

say() { echo "lanes.sh: $*"; }

lanes=("$@")
[[ ${#lanes[@]} -gt 0 ]] || lanes=(kafka kafka3 secure)
for lane in "${lanes[@]}"; do
    [[ "$lane" == kafka || "$lane" == kafka3 || "$lane" == secure ]] || {
        say "unknown lane '$lane' (kafka, kafka3, secure)"; exit 2; }
done

# --- can Apache Kafka run here? ---------------------------------------------------------------
why_not_kafka() {
    command -v java >/dev/null || { echo "java is not on PATH (Kafka 4 needs Java 17+)"; return; }
    command -v mvn >/dev/null || { echo "mvn is not on PATH (it resolves the Kafka jars)"; return; }
    local version major
    version=$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)
    major=${version%%.*}
    [[ "$major" == 1 ]] && major=$(echo "$version" | cut -d. -f2)
    if [[ ! "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
        echo "java is version '${version:-unknown}'; Kafka 4 needs 17 or newer"
    fi
}

unavailable=$(why_not_kafka)
if [[ -n "$unavailable" ]]; then
    for lane in "${lanes[@]}"; do say "lane $lane SKIPPED: $unavailable"; done
    exit 0
fi

# Resolve the jars once, before any lane (cached under ~/.cache/greenchannel after the first
# time): a failure here is a failure of the lanes, not a reason to skip them.
started=$SECONDS
if ! libs=$("$PYTHON" -m streams.dev.kafka --resolve-only); then
    say "FAILED: could not resolve the Kafka jars (python -m streams.dev.kafka --resolve-only)"
    exit 1
fi
say "Kafka jars in $libs ($((SECONDS - started)) s)"

declare -A result duration summary
failed=0

run_lane() {  # run_lane NAME ENV-ASSIGNMENTS... -- PYTEST-ARGS...
    local name=$1 log rc start
    shift
    local -a env_vars=()
    while [[ $1 != -- ]]; do env_vars+=("$1"); shift; done
    shift
    log=$(mktemp -t "gc-lane-$name.XXXXXX.log")
    echo
    say "=== lane $name: ${env_vars[*]} pytest $* ==="
    start=$SECONDS
    env "${env_vars[@]}" timeout --kill-after=60 "$LANE_TIMEOUT" \
        "$PYTHON" -m pytest "$@" "${EXTRA[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    duration[$name]=$((SECONDS - start))
    summary[$name]=$(grep -E '^=* ?[0-9]+ (passed|failed|error|skipped|deselected)|no tests ran' "$log" | tail -n1 | sed 's/^=* *//; s/ *=*$//')
    rm -f "$log"
    if ((rc == 0)); then
        result[$name]=passed
    else
        ((rc == 124)) && say "lane $name timed out after $LANE_TIMEOUT s"
        result[$name]="FAILED (exit $rc)"
        failed=1
    fi
    say "lane $name ${result[$name]} in ${duration[$name]} s: ${summary[$name]:-no pytest summary}"
}

for lane in "${lanes[@]}"; do
    case "$lane" in
    kafka)
        database=${GC_TEST_DATABASE_URL:-}
        fresh=
        if [[ -z "$database" ]]; then
            # A server this lane starts is stopped when the lanes end, whatever their result; one
            # that already ran (a developer's) is left running.
            if ! bash tests/services/postgres.sh running; then
                trap 'bash tests/services/postgres.sh stop' EXIT
            fi
            if server=$(bash tests/services/postgres.sh) && [[ -n "$server" ]]; then
                # A database of this run's own: the live projection is compared with rebuilds,
                # so rows left by an earlier run (signed with other keys) must not be there.
                fresh="gc_lane_$(date +%s)_$$"
                if "$PYTHON" - "$server" "$fresh" <<'EOF'; then
import sys
import psycopg
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1]).set(drivername="postgresql")
with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
    conn.execute(f'CREATE DATABASE "{sys.argv[2]}"')
EOF
                    database="${server%/*}/$fresh"
                    say "PostgreSQL for the kafka lane: $database"
                else
                    fresh=
                    say "PostgreSQL unavailable (could not create a database at $server): the kafka lane runs on SQLite"
                fi
            else
                say "PostgreSQL unavailable (tests/services/postgres.sh failed, see above): the kafka lane runs on SQLite"
            fi
        fi
        run_lane kafka GC_TEST_BROKER=kafka GC_TEST_STORE=rocksdb:// "GC_TEST_DATABASE_URL=$database" -- \
            -q tests/integration tests/unit/test_db.py
        if [[ -n "$fresh" ]]; then
            "$PYTHON" - "$server" "$fresh" <<'EOF' || say "could not drop database $fresh"
import sys
import psycopg
from sqlalchemy.engine import make_url
url = make_url(sys.argv[1]).set(drivername="postgresql")
with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
    conn.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
EOF
        fi
        ;;
    kafka3)
        # The fault tests first: their module-scoped clusters are gone before the session's
        # 3-node cluster of the integration tests starts.
        run_lane kafka3 GC_TEST_BROKER=kafka3 GC_TEST_DATABASE_URL= -- \
            -q -s tests/faults/test_faults.py tests/integration
        ;;
    secure)
        run_lane secure GC_TEST_BROKER=kafka-secure GC_TEST_DATABASE_URL= -- -q -s tests/faults/test_security.py
        ;;
    esac
done

echo
for lane in "${lanes[@]}"; do
    say "lane $lane: ${result[$lane]} in ${duration[$lane]} s (${summary[$lane]:-no pytest summary})"
done
exit "$failed"
