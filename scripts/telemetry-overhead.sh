#!/usr/bin/env bash
# Measures what traces cost: `engram bench` on SQLite in alternated pairs,
# one run with spans exported over OTLP/HTTP to a local receiver that
# answers 200, one without, the order swapped every pair so that drift on
# the machine falls on both sides alike. Prints each run and the medians.
#
#   scripts/telemetry-overhead.sh [ENGRAM_BINARY] [PAIRS]
#
# Extra `engram bench` arguments go in BENCH_ARGS (default
# `--sizes 3000 --queries 500`); OTEL_TRACES_SAMPLER(_ARG) pass through.
set -euo pipefail

engram="${1:-target/release/engram}"
pairs="${2:-8}"
bench_args="${BENCH_ARGS:---sizes 3000 --queries 500}"
port="${SINK_PORT:-4318}"
work="$(mktemp -d)"
trap 'kill "$sink" 2>/dev/null || true; rm -rf "$work"' EXIT

# The receiver: reads each export and answers 200 with an empty
# ExportTraceServiceResponse, counting the bytes it got.
python3 - "$port" >"$work/sink.log" 2>&1 <<'EOF' &
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Sink(BaseHTTPRequestHandler):
    received = 0

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        Sink.received += len(self.rfile.read(length))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
EOF
sink=$!
sleep 1

run() { # run on|off N -> prints "recall_p50_ms remember_per_s"
    local mode=$1 n=$2 db="$work/bench-$1-$2.db"
    local env=(env -u OTEL_EXPORTER_OTLP_ENDPOINT)
    if [ "$mode" = on ]; then
        env=(env OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port")
    fi
    # shellcheck disable=SC2086
    "${env[@]}" "$engram" bench $bench_args --database "$db" 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ && NF > 5 { sub(/ms$/, "", $5); print $5, $2 }' | tail -1
    rm -f "$db" "$db"-*
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: >"$work/off" && : >"$work/on"
for i in $(seq 1 "$pairs"); do
    if [ $((i % 2)) -eq 1 ]; then order="on off"; else order="off on"; fi
    for mode in $order; do
        result="$(run "$mode" "$i")"
        echo "$result" >>"$work/$mode"
        echo "pair $i $mode: recall p50 $(cut -d' ' -f1 <<<"$result") ms, remember $(cut -d' ' -f2 <<<"$result")/s"
    done
done
for mode in off on; do
    echo "traces $mode: recall p50 median $(cut -d' ' -f1 "$work/$mode" | median) ms," \
        "remember median $(cut -d' ' -f2 "$work/$mode" | median)/s"
done
paste -d' ' "$work/on" "$work/off" |
    awk '{ print $1 - $3 }' | median | xargs echo "median paired recall difference (on - off), ms:"
