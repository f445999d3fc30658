#!/usr/bin/env bash
# Per-rank peak memory of classify2d with duplicate removal at 100k and 1M rows on 2 MPI
# ranks (issue 15: duplicate removal routes picks to the owner rank of their micrograph, so
# memory per rank must stay flat in N). The input is a CryoSPARC .cs written by
# scripts/interop/make_cs.py (locations on random micrographs, 16 px images at 4 Å/px in 4
# stacks), imported. The job is as short as classify2d allows (2 classes, one online
# iteration, then the assignment pass over every particle, streamed: max_resident_gb 0),
# followed by duplicate removal at 20 Å. Peak RSS of each rank from GNU time (%M, KiB).
# Usage: bash benches/dedup_scale.sh [WORKDIR=/tmp/emclass-bench-dedup] [SIZES="100000 1000000"]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-dedup}
SIZES=${2:-"100000 1000000"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
B=${EMCLASS:-$PWD/target/release/emclass}
PY=$PWD/.venv/bin/python
mkdir -p "$WORK"
echo "| rows | duplicates removed | rank 0 peak MiB | rank 1 peak MiB | wall s |"
echo "|---|---|---|---|---|"
for N in $SIZES; do
    D="$WORK/n$N"
    if [ ! -f "$D/data.h5" ]; then
        rm -rf "$D"; mkdir -p "$D"
        "$PY" scripts/interop/make_cs.py "$D/particles.cs" --n "$N" --box 16 --psize 4 --stacks 4 --classes 20 >/dev/null
        "$B" -q import --cs "$D/particles.cs" --out "$D/data.h5"
    fi
    cat > "$D/c2d.yaml" <<Y
input: $D/data.h5
output: $D/out
num_classes: 2
online_em_iterations: 1
full_iterations: 0
max_res_A: 12
max_resident_gb: 0
max_shift_px: 3
ctf_correct: false
remove_duplicates: true
min_separation_A: 20
Y
    rm -rf "$D/out" "$D"/mem.*
    t0=$(date +%s.%N)
    mpirun -n 2 --oversubscribe sh -c "/usr/bin/time -f %M -o $D/mem.\$OMPI_COMM_WORLD_RANK $B -q classify2d $D/c2d.yaml"
    t1=$(date +%s.%N)
    m0=$(($(cat "$D/mem.0") / 1024)); m1=$(($(cat "$D/mem.1") / 1024))
    removed=$(grep -o '"duplicates_removed": *[0-9]*' "$D/out/summary.json" | grep -o '[0-9]*$')
    printf "| %s | %s | %s | %s | %.1f |\n" "$N" "$removed" "$m0" "$m1" "$(echo "$t1 - $t0" | bc)"
done
