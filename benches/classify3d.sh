#!/usr/bin/env bash
# 3D classification accuracy and speed at the acceptance size: 20,000 simulated hetero3d
# particles of 128 px (2 Å/px), SNR 0.05, CTF, two states differing by a domain of 10% of the
# mass, 15% junk, 5% duplicates, known poses. Runs classify3d (filter_res_A 10, defaults
# otherwise) with K = 2 on 1 rank, then K = 4 on 1 rank and under mpirun -n 2, and an
# "oracle" K = 2 run that starts from the true volumes (init_mode input, one F-EM
# iteration): the accuracy the data allow under this model. Prints wall and CPU seconds, peak
# RSS per process, the ARI vs gt/state (non-junk) and the class sizes from summary.json.
# Usage: bash benches/classify3d.sh [WORKDIR=/tmp/emclass-bench-c3d] [SIM_SEED=0] [SEED=0]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-c3d}
SIM_SEED=${SIM_SEED:-0}
SEED=${SEED:-0}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --locked -q
B=$PWD/target/release/emclass
rm -rf "$WORK"; mkdir -p "$WORK"
"$B" -q simulate configs/simulate_hetero3d.yaml --set output="$WORK/sim" --set seed="$SIM_SEED"
printf "| run | wall s | CPU s | peak RSS MiB/process | ARI (non-junk) | class sizes |\n|---|---:|---:|---:|---:|---|\n"
run() {
    local name=$1 k=$2; shift 2
    /usr/bin/time -v "$@" classify3d configs/classify3d.yaml --set input="$WORK/sim/particles.h5" \
        --set output="$WORK/$name" --set num_classes="$k" --set filter_res_A=10 \
        --set seed="$SEED" $EXTRA 2> "$WORK/$name.log"
    local wall cpu rss
    wall=$(grep "Elapsed (wall" "$WORK/$name.log" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    cpu=$(awk -F': ' '/User time/{u=$2} /System time/{s=$2} END{printf "%.0f", u+s}' "$WORK/$name.log")
    rss=$(awk -F': ' '/Maximum resident/{printf "%.0f", $2/1024}' "$WORK/$name.log")
    python3 - "$WORK/$name/summary.json" "$name" "$wall" "$cpu" "$rss" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | "
      f"{s['ari_vs_ground_truth_states']:.4f} | {[int(c) for c in s['class_assignments']]} |")
PY
}
EXTRA="" run k2_one_rank 2 "$B"
EXTRA="" run k4_one_rank 4 "$B"
EXTRA="" run k4_two_ranks 4 mpirun --oversubscribe -n 2 "$B"
EXTRA="--set init_mode=input --set initial_volumes=[$WORK/sim/volumes/state_00.mrc,$WORK/sim/volumes/state_01.mrc] --set init_lowpass_A=10 --set oem_epochs=0 --set fem_max_iterations=1 --set class_similarity=0" \
    run oracle_k2 2 "$B"
