#!/usr/bin/env bash
# Per-rank peak memory of the curation jobs at 100k and 1M rows on 2 MPI ranks (issue 15:
# memory per rank must be flat in N). The input is a CryoSPARC .cs written by
# scripts/interop/make_cs.py (random 2D classes over 20 classes, class_posterior, locations;
# 16 px images in 4 stacks) and imported; classes.mrcs (20 random 16 px averages) sits next
# to it. Jobs: subset by class_probability_2d at 0.5, subset by a 2-component GMM of
# ctf/df1_A, select2d dropping classes 0-4, rebalance2d into 5 superclasses at factor 0.5.
# Peak RSS of each rank from GNU time (%M, KiB). Prints a Markdown table.
# Usage: bash benches/curate_scale.sh [WORKDIR=/tmp/emclass-bench-curate-scale] [SIZES="100000 1000000"]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-curate-scale}
SIZES=${2:-"100000 1000000"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --locked -q
B=$PWD/target/release/emclass
PY=$PWD/.venv/bin/python
mkdir -p "$WORK"
echo "| rows | job | rank 0 peak MiB | rank 1 peak MiB | wall s |"
echo "|---|---|---|---|---|"
for N in $SIZES; do
    D="$WORK/n$N"
    if [ ! -f "$D/data.h5" ]; then
        rm -rf "$D"; mkdir -p "$D"
        "$PY" scripts/interop/make_cs.py "$D/particles.cs" --n "$N" --box 16 --stacks 4 --classes 20 >/dev/null
        "$B" -q import --cs "$D/particles.cs" --out "$D/data.h5"
        "$PY" -c "import mrcfile, numpy as np; m = mrcfile.new('$D/classes.mrcs', overwrite=True); m.set_data(np.random.default_rng(0).normal(size=(20, 16, 16)).astype(np.float32)); m.set_image_stack(); m.voxel_size = 1.0; m.close()"
    fi
    cat > "$D/subset.yaml" <<Y
input: $D/data.h5
output: $D/subset
mode: class_probability_2d
thresholds: [0.5]
Y
    cat > "$D/gmm.yaml" <<Y
input: $D/data.h5
output: $D/gmm
mode: statistic
field: ctf/df1_A
method: gmm
Y
    cat > "$D/select2d.yaml" <<Y
input: $D/data.h5
output: $D/select2d
drop: [0, 1, 2, 3, 4]
Y
    cat > "$D/rebalance2d.yaml" <<Y
input: $D/data.h5
output: $D/rebalance2d
num_superclasses: 5
rebalance_factor: 0.5
Y
    for job in subset:subset gmm:subset select2d:select2d rebalance2d:rebalance2d; do
        cfg=${job%%:*}; cmd=${job##*:}
        rm -f "$D"/mem.*
        t0=$(date +%s.%N)
        mpirun -n 2 --oversubscribe sh -c "/usr/bin/time -f %M -o $D/mem.\$OMPI_COMM_WORLD_RANK $B -q $cmd $D/$cfg.yaml --overwrite"
        t1=$(date +%s.%N)
        m0=$(($(cat "$D/mem.0") / 1024)); m1=$(($(cat "$D/mem.1") / 1024))
        printf "| %s | %s | %s | %s | %.1f |\n" "$N" "$cfg" "$m0" "$m1" "$(echo "$t1 - $t0" | bc)"
    done
done
