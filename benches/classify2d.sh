#!/usr/bin/env bash
# 2D classification accuracy and speed at the acceptance size: 20,000 simulated particles of
# 128 px (2 Å/px), SNR 0.05, CTF, 6 views, 15% junk, 5% duplicates; classify2d with 10 classes
# and duplicate removal, on 1 rank and under mpirun -n 2. Prints, per run: wall and CPU
# seconds, peak RSS per process, the adjusted Rand index of class vs true view on the non-junk
# particles, and duplicate pairs found / false removals (from summary.json, computed against
# the simulator's gt/* fields), then the 1- vs 2-rank label agreement.
# Usage: bash benches/classify2d.sh [WORKDIR=/tmp/emclass-bench-c2d] [SIM_SEED=1] [SEED=0]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-c2d}
SIM_SEED=${SIM_SEED:-1}
SEED=${SEED:-0}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --locked -q
B=$PWD/target/release/emclass
rm -rf "$WORK"; mkdir -p "$WORK"
"$B" -q simulate configs/simulate_views2d.yaml --set output="$WORK/sim" --set seed="$SIM_SEED"
printf "| run | wall s | CPU s | peak RSS MiB/process | ARI (non-junk) | duplicate pairs found | false removals |\n|---|---:|---:|---:|---:|---:|---:|\n"
run() {
    local name=$1; shift
    /usr/bin/time -v "$@" classify2d configs/classify2d.yaml --set input="$WORK/sim/particles.h5" \
        --set output="$WORK/$name" --set num_classes=10 --set remove_duplicates=true \
        --set seed="$SEED" 2> "$WORK/$name.log"
    local wall cpu rss
    wall=$(grep "Elapsed (wall" "$WORK/$name.log" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    cpu=$(awk -F': ' '/User time/{u=$2} /System time/{s=$2} END{printf "%.0f", u+s}' "$WORK/$name.log")
    rss=$(awk -F': ' '/Maximum resident/{printf "%.0f", $2/1024}' "$WORK/$name.log")
    python3 - "$WORK/$name/summary.json" "$name" "$wall" "$cpu" "$rss" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d = s["duplicates_vs_ground_truth"] or {}
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {s['ari_vs_ground_truth_views']:.4f} | "
      f"{d.get('pairs_found')}/{d.get('pairs')} | {d.get('false_removals')}/{d.get('other_particles')} |")
PY
}
run one_rank "$B"
run two_ranks mpirun --oversubscribe -n 2 "$B"
# 1- vs 2-rank agreement of the class labels (h5dump from hdf5-tools).
for r in one_rank two_ranks; do
    h5dump -d /alignments2D/class -y -w 0 "$WORK/$r/particles.h5" | sed -n '/DATA {/,/}/p' \
        | tr -d 'DATA{}' | tr ',' '\n' | grep -v '^\s*$' > "$WORK/$r.classes"
done
python3 - "$WORK" <<'PY'
import sys
w = sys.argv[1]
a = open(f"{w}/one_rank.classes").read().split()
b = open(f"{w}/two_ranks.classes").read().split()
print(f"1 vs 2 ranks: {sum(x == y for x, y in zip(a, b))}/{len(a)} particles with the same class")
PY
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
it1 = json.load(open(f"{w}/one_rank/summary.json"))["iterations"]
print("per-iteration seconds (1 rank):", " ".join(f"{r['seconds']:.1f}" for r in it1))
PY
