#!/usr/bin/env bash
# Long randomized corruption run of the STAR, MRC/MRCS and .cs readers and of the YAML config
# loader (issue 15): the `fuzz_*` tests of tests/fuzz.rs with many more inputs.
#
#   bash benches/fuzz.sh [ITERATIONS=100000] [SEED=15]
#
# ITERATIONS inputs per format (so 4 × ITERATIONS in all). Each input is a valid file (STAR and
# .cs as `emclass export` writes them, the test helpers' STAR and stacks, hand-made stacks of
# every mode and byte order, the example configs) with 1-3 random mutations (truncation,
# flipped bits, overwritten bytes, header words set to extreme values, inserted, deleted or
# repeated bytes, extreme tokens, rewritten NPY shapes and type strings), read in-process.
# A run fails on any panic, any error that is not one line naming the file, any single
# allocation over 64 MiB + 64 × the input size, and any input taking over 5 s; the failing
# inputs are saved under $TMPDIR as emclass-fuzz-<format>-<index>-<file>.
# Prints one line per format (inputs, read, refused, panics, largest allocation, slowest
# input, seconds) and the total wall time.
set -euo pipefail

ITERATIONS=${1:-100000}
SEED=${2:-15}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

cargo test --release --test fuzz --no-run 2>&1 | tail -1
start=$(date +%s.%N)
set +e
EMCLASS_FUZZ_ITERATIONS=$ITERATIONS EMCLASS_FUZZ_SEED=$SEED \
    cargo test --release --test fuzz fuzz_ -- --nocapture --test-threads 4 >"${TMPDIR:-/tmp}/emclass-fuzz.log" 2>&1
status=$?
set -e
end=$(date +%s.%N)
grep -a '^fuzz ' "${TMPDIR:-/tmp}/emclass-fuzz.log" || true
grep -a -E '^test result|panicked at|input [0-9]+ \(' "${TMPDIR:-/tmp}/emclass-fuzz.log" | head -40 || true
printf 'seed %s, %s inputs per format, wall %.1f s (4 formats in parallel), exit %s\n' \
    "$SEED" "$ITERATIONS" "$(echo "$end - $start" | bc)" "$status"
printf 'machine: %s, %s cores, load %s\n' "$(uname -m)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
