#!/usr/bin/env bash
# The README's first command: installs everything emclass needs, builds it, and runs a small
# end-to-end demo in demo_out/: simulate particles with ground truth, classify them in 2D
# under mpirun -n 2 (class averages, plots, accuracy against the ground truth), curate them
# (subset by class probability, rebalance superclasses), export them to
# RELION (STAR + MRC stack) and CryoSPARC (.cs), import the STAR back, check that the round
# trip is lossless, check MPI, and print a report of the datasets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --locked
B=target/release/emclass
OUT=demo_out
rm -rf "$OUT"
mkdir -p "$OUT/relion"

echo "== simulate: 6,000 particles of 128 px, 6 views, 15% junk, duplicates, CTF, SNR 0.05"
$B simulate configs/simulate_views2d.yaml --set output=$OUT/sim --set num_particles=6000

echo "== classify2d under mpirun -n 2: 10 classes (2 ranks share the particles, all-reduce the statistics; ~1.5 min)"
mpirun --oversubscribe -n 2 $B classify2d configs/classify2d.yaml --set input=$OUT/sim/particles.h5 \
    --set output=$OUT/classify2d --set num_classes=10 --set remove_duplicates=true
echo "   class averages: $OUT/classify2d/plots/classes.png, classes.mrcs; plots/: ESS, best-class probability, noise model"
grep -E '"(ari_vs_ground_truth_views|duplicates_removed)"' $OUT/classify2d/summary.json

echo "== curate: keep particles whose best 2D class probability is >= 0.9; group the classes into superclasses and rebalance"
$B -q subset configs/subset.yaml --set input=$OUT/classify2d/particles.h5 --set output=$OUT/subset \
    --set "thresholds=[0.9]"
grep -A3 '"file"' $OUT/subset/summary.json | grep -E '"(file|num_particles)"' | paste - - | tr -s ' '
$B -q rebalance2d configs/rebalance2d.yaml --set input=$OUT/classify2d/particles.h5 \
    --set output=$OUT/rebalance2d --set num_superclasses=8 --set rebalance_factor=0.5
echo "   superclasses: $OUT/rebalance2d/plots/affinity_sorted.png, superclasses.png, superclass_sizes.png"
python3 -c "import json; s = json.load(open('$OUT/rebalance2d/summary.json')); print('   superclass sizes before', s['superclass_sizes_before'], 'after', s['superclass_sizes_after'])"

echo "== export to RELION and CryoSPARC"
$B export --in $OUT/classify2d/particles.h5 --star $OUT/relion/particles.star \
    --mrcs $OUT/relion/particles.mrcs --cs $OUT/relion/particles.cs

echo "== import the STAR back (under mpirun -n 2: rank 0 imports, rank 1 waits)"
mpirun --oversubscribe -n 2 $B import --star $OUT/relion/particles.star --out $OUT/reimported.h5

echo "== export the re-imported dataset and compare with the first export (Python starfile/mrcfile)"
mkdir -p $OUT/relion2
$B export --in $OUT/reimported.h5 --star $OUT/relion2/particles.star --mrcs $OUT/relion2/particles.mrcs
.venv/bin/python scripts/interop/check_mrcs.py $OUT/relion/particles.mrcs $OUT/relion2/particles.mrcs
.venv/bin/python scripts/interop/check_star.py $OUT/relion/particles.star $OUT/relion2/particles.star --ignore rlnImageName

echo "== MPI check on 3 ranks"
mpirun --oversubscribe -n 3 $B comm-check

echo "== report"
$B info $OUT/sim/particles.h5
$B info $OUT/reimported.h5
echo "demo finished: outputs in $OUT/"
