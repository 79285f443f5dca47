#!/usr/bin/env bash
# Replays engram's insert of new memories with pgbench and prints PostgreSQL's CPU per
# call, for comparing schema variants (docs/benchmarks.md, twenty-second run).
#
#   bench/replay_insert.sh ENGRAM_BINARY [VARIANT.sql ...]
#
# For each variant (none given: the schema as migrated), in turn: a fresh database on
# $ADMIN_URL's server, migrated by ENGRAM_BINARY at 1536 dimensions, then the variant's
# SQL applied (drop a trigger, replace a function, ...), then $CALLS calls from $CLIENTS
# pgbench clients, each `engram_insert_memories` with one memory (a fixed random vector)
# and 12 postings for one of 1,000 users. The duplicate threshold is above 1, so no
# vector search runs: what is measured is the insert with its triggers. The backends'
# CPU comes from /proc, sampled until pgbench ends. Alternate variants and repeat: on a
# shared 2-core machine single runs differ by 5-10%.
set -euo pipefail
engram=${1:?usage: bench/replay_insert.sh ENGRAM_BINARY [VARIANT.sql ...]}
shift
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(/dev/null)
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:54329/postgres}
CALLS=${CALLS:-4000}
CLIENTS=${CLIENTS:-4}
PG_BIN=${PG_BIN:-${ENGRAM_TEST_PG_BIN:-}}
psql=${PG_BIN:+$PG_BIN/}psql
pgbench=${PG_BIN:+$PG_BIN/}pgbench
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/insert.sql" <<'SQL'
\set u random(1, 1000)
SELECT set_config('engram.dedup_threshold', '2', false);
SELECT engram_insert_memories(
  ARRAY['user' || :u], ARRAY[gen_random_uuid()], ARRAY[NULL::text], ARRAY[NULL::text],
  ARRAY[md5(random()::text)], ARRAY[decode(md5(random()::text), 'hex')],
  ARRAY[(SELECT v FROM replay_vector)], ARRAY['{}'::jsonb], ARRAY['[]'::jsonb], ARRAY[12],
  ARRAY[NULL::timestamptz], ARRAY['user'], now(),
  array_fill(1::bigint, ARRAY[12]),
  ARRAY(SELECT 'w' || g || '_' || (random() * 200)::int FROM generate_series(1, 12) g),
  array_fill(1, ARRAY[12]));
SQL

# CPU seconds of the processes whose command line holds $1, sampled until SIGTERM.
cat > "$work/cpu.py" <<'PY'
import os, signal, sys, time
hz, pattern, last, done = os.sysconf("SC_CLK_TCK"), sys.argv[1], {}, []
signal.signal(signal.SIGTERM, lambda *_: done.append(1))
while not done:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if pattern in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"):
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                last[pid] = (int(fields[11]) + int(fields[12])) / hz
        except OSError:
            pass
    time.sleep(0.1)
print(sum(last.values()))
PY

for variant in "${variants[@]}"; do
  db=replay_insert_$$_$RANDOM
  url=${ADMIN_URL%/*}/$db
  "$psql" "$ADMIN_URL" -qc "CREATE DATABASE $db"
  ENGRAM_DATABASE_URL=$url ENGRAM_EMBEDDING_DIMS=1536 ENGRAM_LOG=error "$engram" migrate \
    >"$work/migrate.log" 2>&1 || { cat "$work/migrate.log" >&2; exit 1; }
  "$psql" "$url" -q -v ON_ERROR_STOP=1 \
    -c "CREATE TABLE replay_vector AS SELECT ('[' || array_to_string(ARRAY(SELECT (random() - 0.5)::real FROM generate_series(1, 1536)), ',') || ']')::vector(1536) AS v" \
    -f "$variant" >/dev/null
  python3 "$work/cpu.py" "postgres $db" > "$work/cpu" &
  watcher=$!
  tps=$("$pgbench" "$url" -n -f "$work/insert.sql" -c "$CLIENTS" -j "$CLIENTS" \
        -t $((CALLS / CLIENTS)) | awk '/^tps/ {print $3}')
  sleep 0.3
  kill -TERM $watcher
  wait $watcher
  label=$(basename "$variant"); [ "$variant" = /dev/null ] && label="as migrated"
  awk -v v="$label" -v tps="$tps" -v n="$CALLS" \
    '{printf "%s: %.0f calls/s, PostgreSQL CPU %.3f ms a call\n", v, tps, $1 * 1000 / n}' "$work/cpu"
  "$psql" "$ADMIN_URL" -qc "DROP DATABASE $db"
done
