#!/usr/bin/env bash
# Fuzz every target for SECONDS each (default 600), two at a time.
#   scripts/fuzz.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). libFuzzer's Rust integration
# wants nightly; on a stable toolchain RUSTC_BOOTSTRAP=1 unlocks it, and
# `--sanitizer none` avoids the sanitizer runtimes only nightly ships.
# Crashes land in fuzz/artifacts/<target>/ (ignored by git). fuzz/seeds/<target>/
# holds a few hand-picked inputs and is only read; the working corpus that
# libFuzzer grows from them lives in a temp dir, removed at exit, so a run
# leaves nothing in the work tree to commit.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-600}
corpus=$(mktemp -d "${TMPDIR:-/tmp}/ocimodel-fuzz-corpus.XXXXXX")
trap 'rm -rf "$corpus"' EXIT
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none -O
run() {
  mkdir -p "$corpus/$1"
  cargo fuzz run --sanitizer none -O "$1" "$corpus/$1" "seeds/$1" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>&1 | tail -n 3
}
run reference & run challenge & wait
run manifest & run tar & wait
run signature & run mirrors & wait
crashes=$(find artifacts -type f 2>/dev/null || true)
if [ -n "$crashes" ]; then
  echo "fuzzing found crashes:"; echo "$crashes"; exit 1
fi
echo "fuzzing done: no crashes"
