#!/usr/bin/env bash
# A private PostgreSQL for the tests, on a free loopback port.
#
#   bash tests/services/postgres.sh [DIR]        start (or reuse) it; print its SQLAlchemy URL
#   bash tests/services/postgres.sh stop [DIR]   stop it
#   bash tests/services/postgres.sh running [DIR]  exit 0 if a server runs in DIR, 1 if not
#
# DIR defaults to ~/.cache/greenchannel/pg (as root, when the postgres user cannot reach
# that, /var/tmp/greenchannel/pg). The cluster lives in DIR/data, trusts 127.0.0.1 only
# and listens nowhere else (no Unix socket). On success stdout is exactly one line:
#   postgresql+psycopg://postgres@127.0.0.1:PORT/greenchannel
# Everything else goes to stderr. If the server binaries are missing and we are root,
# PostgreSQL is installed from the Debian packages first. Idempotent: a running instance
# (live pid in DIR/data/postmaster.pid) is reused, a stopped one restarted on its old port.
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

action=start
dir=
for arg in "$@"; do
    case "$arg" in
        stop|start|running) action=$arg ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) [[ -z "$dir" ]] || die "one directory only (got '$dir' and '$arg')"; dir=$arg ;;
    esac
done

is_root() { [[ "$(id -u)" == 0 ]]; }

find_bindir() {
    local d
    # Debian's layout first (not on PATH), newest major version first; then whatever PATH has.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
    done
    d=$(command -v initdb 2>/dev/null) || return 1
    d=$(dirname "$(readlink -f "$d")")
    [[ -x "$d/pg_ctl" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
    return 1
}

# Run a server-side command as the cluster owner: `postgres` when we are root (initdb and
# postgres refuse root), ourselves otherwise.
as_owner() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# --- the directory ------------------------------------------------------------------------
if [[ -z "$dir" ]]; then
    dir="${XDG_CACHE_HOME:-$HOME/.cache}/greenchannel/pg"
    if is_root && id postgres >/dev/null 2>&1; then
        # /root is not searchable by the postgres user: use a place it can reach.
        probe=$dir
        while [[ ! -e "$probe" ]]; do probe=$(dirname "$probe"); done
        if ! runuser -u postgres -- test -x "$probe"; then
            dir=/var/tmp/greenchannel/pg
            say "the postgres user cannot reach ${XDG_CACHE_HOME:-$HOME/.cache}; using $dir"
        fi
    fi
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
data="$dir/data"
log="$dir/postgres.log"

# One caller at a time per directory (parallel CI lanes may all call this).
exec 9>"$dir/.lock"
flock -w 120 9 || die "another postgres.sh holds $dir/.lock for over 120 s"

server_runs() { [[ -f "$data/postmaster.pid" ]] && kill -0 "$(head -n1 "$data/postmaster.pid")" 2>/dev/null; }

if [[ "$action" == running ]]; then
    server_runs
    exit
fi

# --- stop -----------------------------------------------------------------------------------
if [[ "$action" == stop ]]; then
    if server_runs; then
        bindir=$(find_bindir) || die "a server runs in $data but no pg_ctl is installed to stop it"
        as_owner "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >&2
    else
        say "no server running in $data"
    fi
    exit 0
fi

# --- the binaries (installed if missing and we can) ----------------------------------------
if ! bindir=$(find_bindir); then
    if ! is_root; then
        die "PostgreSQL server binaries not found (initdb, pg_ctl, postgres) and not root to install them:" \
            "install the 'postgresql' package, or point GC_TEST_DATABASE_URL at an existing server"
    fi
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get to install it"
    say "installing PostgreSQL from the Debian packages (apt-get install postgresql) ..."
    started=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends postgresql >&2 || die "apt-get install postgresql failed"
    say "installed in $((SECONDS - started)) s"
    bindir=$(find_bindir) || die "postgresql was installed but no initdb/pg_ctl/postgres were found under /usr/lib/postgresql"
fi
if is_root; then
    id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user to own the cluster (the Debian package makes one)"
    chown postgres: "$dir"
fi

# Client programs: the server's own, else the ones on PATH (postgresql-client).
client() { if [[ -x "$bindir/$1" ]]; then echo "$bindir/$1"; else command -v "$1"; fi; }
pg_isready=$(client pg_isready) || die "pg_isready not found"
psql=$(client psql) || die "psql not found"

url_for() { echo "postgresql+psycopg://postgres@127.0.0.1:$1/greenchannel"; }

ready() { "$pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 1; }

# Wait for the server at port $1 (bounded: 30 s). Non-zero if it died or never answered.
wait_ready() {
    local port=$1 i
    for ((i = 0; i < 150; i++)); do
        ready "$port" && return 0
        # The postmaster removes its pid file when it gives up (e.g. the port is taken).
        if ((i > 5)) && ! { [[ -f "$data/postmaster.pid" ]] && kill -0 "$(head -n1 "$data/postmaster.pid")" 2>/dev/null; }; then
            return 1
        fi
        sleep 0.2
    done
    return 1
}

ensure_database() {
    local port=$1
    if [[ -z "$("$psql" -X -q -t -A -h 127.0.0.1 -p "$port" -U postgres -d postgres \
                 -c "SELECT 1 FROM pg_database WHERE datname = 'greenchannel'")" ]]; then
        "$psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE greenchannel" >&2 || die "could not create database greenchannel"
    fi
}

# --- reuse a running instance ----------------------------------------------------------------
if [[ -f "$data/postmaster.pid" ]]; then
    pid=$(sed -n 1p "$data/postmaster.pid")
    port=$(sed -n 4p "$data/postmaster.pid")
    if [[ -n "$pid" && -n "$port" ]] && kill -0 "$pid" 2>/dev/null; then
        wait_ready "$port" || die "the server in $data (pid $pid) does not answer on 127.0.0.1:$port; see $log"
        ensure_database "$port"
        url_for "$port"
        exit 0
    fi
fi

# --- a new cluster ---------------------------------------------------------------------------
if [[ ! -f "$data/PG_VERSION" ]]; then
    rm -rf "$data"
    as_owner mkdir -p "$data"
    say "initdb $data ($("$bindir/postgres" --version))"
    as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust --no-locale -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    # Trust loopback TCP only: no Unix socket, no other address, no other host.
    as_owner tee "$data/pg_hba.conf" >/dev/null <<'EOF'
# greenchannel test cluster: trust on 127.0.0.1 only
host    all    all    127.0.0.1/32    trust
EOF
    # A throwaway test database: durability is not worth the time here.
    as_owner tee -a "$data/postgresql.conf" >/dev/null <<'EOF'

# greenchannel test cluster (tests/services/postgres.sh)
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
fi

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
    local p i
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 30000))
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    return 1
}

# Restart on the port it had, if still free, so that the URL stays the same.
port=$(cat "$dir/port" 2>/dev/null || true)
for attempt in 1 2 3 4 5; do
    if [[ -z "$port" ]] || port_in_use "$port"; then
        port=$(pick_port) || die "no free loopback port found"
    fi
    rm -f "$data/postmaster.pid"  # stale: its process is gone (checked above)
    # 9>&-: the server must not inherit (and so hold forever) the lock of this script.
    as_owner "$bindir/pg_ctl" -D "$data" -l "$log" -o "-p $port" -W start >/dev/null 9>&- \
        || die "pg_ctl start failed; see $log"
    if wait_ready "$port"; then
        echo "$port" >"$dir/port"
        ensure_database "$port"
        url_for "$port"
        exit 0
    fi
    if tail -n 20 "$log" 2>/dev/null | grep -q "could not bind\|Address already in use"; then
        say "port $port was taken meanwhile; trying another"
        port=
        continue
    fi
    tail -n 20 "$log" >&2 2>/dev/null || true
    die "PostgreSQL did not become ready on 127.0.0.1:$port within 30 s (log: $log)"
done
die "could not start PostgreSQL on a free port after 5 attempts (log: $log)"
