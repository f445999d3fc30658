#!/usr/bin/env bash
# Simulator throughput and streaming: wall time and peak memory of `emclass simulate` at
# the acceptance size (20,000 × 128 px) and at 20,000 vs 200,000 particles of 64 px (peak
# memory must not grow with the number of images, only with the metadata table).
# Usage: bash benches/simulate.sh [WORKDIR=/tmp/emclass-bench-sim]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-sim}
cargo build --release --locked -q
B=$PWD/target/release/emclass
rm -rf "$WORK"; mkdir -p "$WORK"
printf "| run | wall s | CPU s | peak RSS MiB | particles.h5 MiB |\n|---|---:|---:|---:|---:|\n"
run() {
    local name=$1; shift
    /usr/bin/time -v "$B" -q simulate configs/simulate_views2d.yaml --set output="$WORK/$name" "$@" 2> "$WORK/$name.time"
    local wall cpu rss size
    wall=$(grep "Elapsed (wall" "$WORK/$name.time" | awk '{print $NF}' | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    cpu=$(awk -F': ' '/User time/{u=$2} /System time/{s=$2} END{printf "%.1f", u+s}' "$WORK/$name.time")
    rss=$(awk -F': ' '/Maximum resident/{printf "%.0f", $2/1024}' "$WORK/$name.time")
    size=$(du -m "$WORK/$name/particles.h5" | cut -f1)
    printf "| %s | %s | %s | %s | %s |\n" "$name ($*)" "$wall" "$cpu" "$rss" "$size"
    rm -rf "${WORK:?}/$name"
}
run n20k_box128 --set num_particles=20000 --set box_px=128
run n20k_box64 --set num_particles=20000 --set box_px=64
run n200k_box64 --set num_particles=200000 --set box_px=64
rm -rf "$WORK"
