#!/usr/bin/env bash
# Million-particle 2D classification with streaming: per-rank peak memory must stay flat as
# N grows (particles streamed from HDF5 with max_resident_gb: 0), and the run is timed on 1
# and 2 ranks. Simulates views2d sets of 64 px at 3 Å (stored as f16), then runs classify2d
# with 50 classes, max_res 18 Å, shifts within 2 px, 6 online-EM iterations and one full
# pass. Prints one row per run: ranks, N, wall seconds, peak RSS of each rank (MiB), the
# full pass's E-step and communication seconds, all-reduce bytes per iteration, and rows
# written to particles.h5.
# Usage: bash benches/scale2d.sh [WORKDIR=/tmp/emclass-scale2d]
#        SIZES="100000 1000000" RANKS="1 2" RESIDENT=0 bash benches/scale2d.sh
# (RESIDENT=1 adds a 1-rank run of each size with the particles held in memory.)
# THREADS (default 1) rayon threads per rank: with 1, one rank uses one core and two ranks
# two, so the 1 -> 2 rank times measure strong scaling on this 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-scale2d}
SIZES=${SIZES:-"100000 1000000"}
RANKS=${RANKS:-"1 2"}
RESIDENT=${RESIDENT:-0}
export RAYON_NUM_THREADS=${THREADS:-1}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --locked -q
B=$PWD/target/release/emclass
mkdir -p "$WORK"
for n in $SIZES; do
    if [ ! -f "$WORK/sim$n/particles.h5" ]; then
        "$B" -q simulate configs/simulate_views2d.yaml --set output="$WORK/sim$n" \
            --set num_particles="$n" --set box_px=64 --set psize_A=3.0 --set dtype=f16
    fi
done
printf "| ranks | particles | memory | wall s | peak RSS MiB per rank | full pass E-step s | full pass comm s | all-reduce B/iter | rows written |\n|---:|---:|---|---:|---|---:|---:|---:|---:|\n"
run() {
    local ranks=$1 n=$2 budget=$3 name="c${1}_${2}_${3}"
    rm -rf "${WORK:?}/$name" "$WORK/$name".rss.*
    local launch=()
    [ "$ranks" -gt 1 ] && launch=(mpirun --oversubscribe -n "$ranks")
    local t0 t1
    t0=$(date +%s.%N)
    "${launch[@]}" sh -c "/usr/bin/time -v -o $WORK/$name.rss.\${OMPI_COMM_WORLD_RANK:-0} $B classify2d configs/classify2d.yaml \
        --set input=$WORK/sim$n/particles.h5 --set output=$WORK/$name --set num_classes=50 \
        --set max_res_A=18 --set max_shift_px=2 --set online_em_iterations=6 --set full_iterations=1 \
        --set max_resident_gb=$budget" 2> "$WORK/$name.log"
    t1=$(date +%s.%N)
    local rss
    rss=$(for f in "$WORK/$name".rss.*; do awk -F': ' '/Maximum resident/{printf "%.0f ", $2/1024}' "$f"; done)
    python3 - "$WORK/$name/summary.json" "$ranks" "$n" "$budget" "$t0" "$t1" "$rss" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
full = [r for r in s["iterations"] if r["phase"] == "full"][-1]
mem = "streamed" if float(sys.argv[4]) == 0 else "resident"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {mem} | {float(sys.argv[6]) - float(sys.argv[5]):.0f} | {sys.argv[7].strip()} | "
      f"{full['estep_seconds']:.1f} | {full['comm_seconds']:.2f} | {full['allreduce_bytes']:,} | {s['num_particles']:,} |")
PY
}
for n in $SIZES; do
    for r in $RANKS; do
        run "$r" "$n" 0
    done
    if [ "$RESIDENT" = 1 ]; then
        run 1 "$n" 64
    fi
done
