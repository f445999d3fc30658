#!/usr/bin/env bash
# GPU benchmark (issue 6): 2D classification on the CUDA backend against the CPU backend, on
# a machine with an NVIDIA GPU. Build on the development machine and carry the binaries:
#   cargo build --release --locked
#   cargo test --release --lib --no-run 2>&1 | grep -o 'target/release/deps/emclass-[0-9a-f]*' | head -1
# with the shared libraries the binary needs (`ldd target/release/emclass`: libhdf5, libmpi and
# their dependencies) copied into a folder on LD_LIBRARY_PATH; then on the GPU machine:
#   bash benches/gpu.sh [BIN=target/release/emclass] [TESTBIN=target/release/deps/emclass-HASH]
#        [N=200000] [K=100] [WORK=/tmp/emclass-gpu]
# Prints: the device's SGEMM throughput (square 8192 products, transfers included), then per
# backend the full-iteration time of classify2d, particle·class·pose evaluations per second and
# the E-step's GEMM FLOP rate (2·T·2|B|·K·R + 2·|B|·K·R flops per particle), from summary.json.
# The CPU run uses N/20 particles (the CPU is ~100× slower); both use the same config.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/emclass}
TESTBIN=${TESTBIN:-}
N=${N:-200000}
K=${K:-100}
WORK=${WORK:-/tmp/emclass-gpu}
mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ -n "$TESTBIN" ]; then
    "$TESTBIN" --ignored --nocapture backend::cuda::tests::sgemm_throughput | grep SGEMM
fi
"$BIN" -q simulate configs/simulate_views2d.yaml --set output="$WORK/sim" --set num_particles="$N" \
    --set duplicate_fraction=0 --overwrite
NCPU=$((N / 20))
"$BIN" -q simulate configs/simulate_views2d.yaml --set output="$WORK/sim_cpu" --set num_particles="$NCPU" \
    --set duplicate_fraction=0 --overwrite
echo "| backend | particles | wall s | full iteration s | evaluations/s | E-step GFLOP/s |"
echo "|---|---:|---:|---:|---:|---:|"
for run in "cuda $WORK/sim" "cpu $WORK/sim_cpu"; do
    set -- $run
    start=$(date +%s.%N)
    if ! "$BIN" -q classify2d configs/classify2d.yaml --set input="$2/particles.h5" \
        --set output="$WORK/c2d_$1" --set num_classes="$K" --set backend="$1" --overwrite; then
        echo "| $1 | failed (message above) | | | | |"
        continue
    fi
    end=$(date +%s.%N)
    python3 - "$WORK/c2d_$1/summary.json" "$1" "$start" "$end" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); it = s["iterations"][-1]
n, k, r, t, b = it["particles"], s["num_classes"], it["n_rotations"], it["n_shifts"], it["band_coefficients"]
evals = n * k * r * t / it["seconds"]
flops = n * (2 * t * 2 * b * k * r + 2 * b * k * r) / it["seconds"]
print(f"| {sys.argv[2]} | {n} | {float(sys.argv[4]) - float(sys.argv[3]):.1f} | {it['seconds']:.1f} | {evals:.3g} | {flops / 1e9:.0f} |")
PY
done
