#!/usr/bin/env bash
# classify3d on 2 MPI ranks at N_SMALL and N_LARGE particles (issue 16: a rank's memory must
# stay flat in N when it streams its particles). Data: `emclass simulate` hetero3d, box 64 at
# 4 Å, 4 states (state s >= 1 lacks domain s), the config's SNR 0.05, CTF, 15% junk, 5%
# duplicates. Job: classify3d K = 4, filter_res_A $FILTER, $OEM_EPOCHS O-EM epoch(s) and
# $FEM F-EM iterations (few, to keep the 10x run short: this measures memory and traffic,
# not accuracy), defaults otherwise. Runs, every one under `mpirun -n 2`:
#   small     N_SMALL, max_resident_gb $BUDGET_GB (fits: resident)
#   large     N_LARGE, max_resident_gb $BUDGET_GB (does not fit: streamed)
#   large_res N_LARGE, max_resident_gb 4 (resident, for comparison; RESIDENT_LARGE=0 skips it)
# Peak RSS of each rank from GNU time (%M, KiB); the memory plan and the communication line
# from rank 0's log; all-reduce bytes per iteration from summary.json. Checks that the streamed
# and resident large runs give identical alignments3D/class (and reports the largest difference
# of alignments3D/class_probs). Prints Markdown tables.
# Usage: bash benches/classify3d_stream.sh [WORKDIR=/tmp/emclass-bench-c3d-stream] [N_SMALL=20000] [N_LARGE=200000]
# Environment: EMCLASS (binary; default: cargo build --release, target/release/emclass),
#   FILTER (20), OEM_EPOCHS (1), FEM (2), BUDGET_GB (0.1), SIM_SEED (1), SEED (0),
#   RESIDENT_LARGE (1), KEEP=1 keeps WORKDIR (deleted at the end otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-c3d-stream}
N_SMALL=${2:-20000}
N_LARGE=${3:-200000}
FILTER=${FILTER:-20}
OEM_EPOCHS=${OEM_EPOCHS:-1}
FEM=${FEM:-2}
BUDGET_GB=${BUDGET_GB:-0.1}
SIM_SEED=${SIM_SEED:-1}
SEED=${SEED:-0}
RESIDENT_LARGE=${RESIDENT_LARGE:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -z "${EMCLASS:-}" ]; then
    cargo build --release --locked -q
    EMCLASS=$PWD/target/release/emclass
fi
B=$EMCLASS
PY=$PWD/.venv/bin/python
[ -x "$PY" ] || PY=python3
if [ -e "$WORK" ] && [ ! -f "$WORK/.emclass-bench" ]; then
    echo "refusing to use $WORK: not created by this script" >&2; exit 1
fi
mkdir -p "$WORK"; touch "$WORK/.emclass-bench"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

for N in $N_SMALL $N_LARGE; do
    t0=$(date +%s.%N)
    "$B" -q simulate configs/simulate_hetero3d.yaml --overwrite --set output="$WORK/sim$N" \
        --set num_particles="$N" --set box_px=64 --set psize_A=4.0 --set num_states=4 \
        --set seed="$SIM_SEED"
    printf "simulate %s particles: %.1f s, %s MB\n" "$N" "$(echo "$(date +%s.%N) - $t0" | bc)" \
        "$(( $(stat -c %s "$WORK/sim$N/particles.h5") / 1000000 ))"
done

ROWS=()
run() {  # name N max_resident_gb
    local name=$1 n=$2 gb=$3 d="$WORK/$1"
    rm -f "$WORK"/mem.*
    local t0 t1
    t0=$(date +%s.%N)
    mpirun -n 2 --oversubscribe sh -c "/usr/bin/time -f %M -o $WORK/mem.\$OMPI_COMM_WORLD_RANK \
        $B classify3d configs/classify3d.yaml --overwrite --set input=$WORK/sim$n/particles.h5 \
        --set output=$d --set num_classes=4 --set filter_res_A=$FILTER --set oem_epochs=$OEM_EPOCHS \
        --set fem_max_iterations=$FEM --set seed=$SEED --set max_resident_gb=$gb" > "$d.log" 2>&1
    t1=$(date +%s.%N)
    local m0=$(( $(cat "$WORK/mem.0") / 1024 )) m1=$(( $(cat "$WORK/mem.1") / 1024 ))
    echo "$m0" > "$d.peak0"
    local plan comm
    plan=$(grep -o 'memory plan (rank 0): [a-z]*: [0-9]* particles × [0-9]* B = [0-9.]* GiB' "$d.log" | sed 's/memory plan (rank 0): //')
    comm=$(grep -o 'communication (rank 0): .*' "$d.log" | sed 's/communication (rank 0): //')
    ROWS+=("$("$PY" - "$d/summary.json" "$name" "$n" "$gb" "$plan" "$m0" "$m1" "$(echo "$t1 - $t0" | bc)" "$comm" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
name, n, gb, plan, m0, m1, wall, comm = sys.argv[2:]
its = s["iterations"]
per = sorted({it["allreduce_bytes"] for it in its})
tot = sum(it["allreduce_bytes"] for it in its)
print(f"| {name} | {n} | {gb} | {plan} | {m0} | {m1} | {float(wall):.1f} | "
      f"{len(its)} | {', '.join(f'{b:,}' for b in per)} | {tot:,} | {comm} | "
      f"{s['ari_vs_ground_truth_states']:.4f} |")
PY
)")
}
run small "$N_SMALL" "$BUDGET_GB"
run large "$N_LARGE" "$BUDGET_GB"
[ "$RESIDENT_LARGE" = 1 ] && run large_res "$N_LARGE" 4

echo
echo "| run | N | max_resident_gb | memory plan (rank 0) | rank 0 peak MiB | rank 1 peak MiB | wall s | iterations | all-reduce B per iteration | all-reduce B summed over iterations | rank 0 communication line | ARI |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"
printf "%s\n" "${ROWS[@]}"
echo
grep -q 'memory plan (rank 0): streamed' "$WORK/large.log" || { echo "FAIL: the large run did not stream" >&2; exit 1; }
grep -q 'memory plan (rank 0): resident' "$WORK/small.log" || { echo "FAIL: the small run did not stay resident" >&2; exit 1; }
printf "streamed large / resident small peak RSS, rank 0: %s / %s MiB = %.3f\n" \
    "$(cat "$WORK/large.peak0")" "$(cat "$WORK/small.peak0")" \
    "$(echo "$(cat "$WORK/large.peak0") / $(cat "$WORK/small.peak0")" | bc -l)"
if [ "$RESIDENT_LARGE" = 1 ]; then
    for r in large large_res; do
        h5dump -d /alignments3D/class -b LE -o "$WORK/$r.class.bin" "$WORK/$r/particles.h5" >/dev/null
        h5dump -d /alignments3D/class_probs -b LE -o "$WORK/$r.probs.bin" "$WORK/$r/particles.h5" >/dev/null
    done
    if cmp -s "$WORK/large.class.bin" "$WORK/large_res.class.bin"; then
        echo "streamed vs resident large run: alignments3D/class identical for all $N_LARGE particles"
    else
        echo "FAIL: streamed vs resident large run: alignments3D/class differ" >&2; exit 1
    fi
    "$PY" - "$WORK/large.probs.bin" "$WORK/large_res.probs.bin" <<'PY'
import sys
import numpy as np
a, b = (np.fromfile(p, dtype="<f4") for p in sys.argv[1:])
print(f"streamed vs resident alignments3D/class_probs: {a.size} values, "
      f"{'bit-identical' if a.tobytes() == b.tobytes() else f'max |diff| {np.abs(a - b).max():.3g}'}")
PY
fi
