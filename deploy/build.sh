#!/bin/sh
# The image's build step as a plain script: deploy/Dockerfile runs it in its
# build stage, and scripts/test.sh runs it on the host, so a step that no
# longer builds fails CI although Docker does not run there.
#
#   deploy/build.sh OUT_DIR     # engram, release, from Cargo.lock as it is, into OUT_DIR
#
# CARGO_TARGET_DIR is honoured (CI keeps its build between runs).
set -eu
out="${1:?usage: deploy/build.sh OUT_DIR}"
cd "$(dirname "$0")/.."
cargo build --release --locked --bin engram
mkdir -p "$out"
cp "${CARGO_TARGET_DIR:-target}/release/engram" "$out/engram"
"$out/engram" --version
