#!/usr/bin/env bash
# Curation benchmarks on simulated data (release build, this machine).
#  1. Junk filtering: 20,000 particles of 128 px (2 Å/px), 6 views, 40% junk, SNR 0.05, CTF;
#     classify2d with 10 classes; then (a) `subset` on the best 2D class probability
#     directly, and (b) `select2d` dropping the junk classes first (the seed's advice: "first
#     select good classes using Select 2D Classes, then feed the selected particles into Class
#     Probability Filter"). The junk classes are those whose particles are mostly simulated
#     junk: a stand-in for the user's pick from plots/classes.png, where they are plain to see.
#     Prints precision (true particles among the kept) and recall (kept among all true
#     particles) for thresholds 0.5-0.99.
#  2. Rebalancing: 20,000 particles, 6 views at populations 50/20/10/10/5/5 %, no junk;
#     classify2d with 12 classes; rebalance2d with 6 superclasses at factors 0, 0.5, 1.
#     Prints purity/completeness of the superclasses against the true views, sizes, time.
# Usage: bash benches/curate.sh [WORKDIR=/tmp/emclass-bench-curate]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-curate}
cargo build --release --locked -q
B=$PWD/target/release/emclass
mkdir -p "$WORK"
col() { # col FILE DATASET -> one value per line (h5dump from hdf5-tools)
    h5dump -d "$2" -y -w 0 "$1" | sed -n '/DATA {/,/}/p' | tr -d 'DATA{}' | tr ',' '\n' | grep -v '^\s*$' | tr -d ' '
}
pr_table() { # pr_table SUMMARY TOTAL_TRUE LABEL
    python3 - "$1" "$2" "$3" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); total = int(sys.argv[2]); label = sys.argv[3]
subs = s["subsets"]; th = s["split"]["thresholds"]
for i, t in enumerate(th):
    kept = sum(x["num_particles"] for x in subs[i + 1:])
    good = sum(x["num_true_particles"] for x in subs[i + 1:])
    prec = good / kept if kept else float("nan")
    print(f"| {label} | {t} | {kept} | {prec:.4f} | {good / total:.4f} |")
PY
}

# ---- 1. junk filtering
if [ ! -f "$WORK/junk/c2d/summary.json" ]; then
    rm -rf "$WORK/junk"; mkdir -p "$WORK/junk"
    "$B" -q simulate configs/simulate_views2d.yaml --set output="$WORK/junk/sim" --set seed=1 \
        --set junk_fraction=0.4
    "$B" -q classify2d configs/classify2d.yaml --set input="$WORK/junk/sim/particles.h5" \
        --set output="$WORK/junk/c2d" --set num_classes=10 --set seed=0
fi
J=$WORK/junk
TH="[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]"
"$B" -q subset configs/subset.yaml --set input="$J/c2d/particles.h5" --set output="$J/direct" \
    --set "thresholds=$TH" --overwrite
col "$J/c2d/particles.h5" /alignments2D/class > "$J/class.txt"
col "$J/c2d/particles.h5" /gt/is_junk > "$J/junk.txt"
JUNK_CLASSES=$(python3 - "$J" <<'PY'
import sys
w = sys.argv[1]
c = [int(x) for x in open(f"{w}/class.txt").read().split()]
j = [int(x) for x in open(f"{w}/junk.txt").read().split()]
k = max(c) + 1
bad = [q for q in range(k) if 2 * sum(1 for a, b in zip(c, j) if a == q and b) > sum(1 for a in c if a == q)]
print("[" + ", ".join(map(str, bad)) + "]")
PY
)
echo "junk classes (mostly simulated junk): $JUNK_CLASSES"
"$B" -q select2d configs/select2d.yaml --set input="$J/c2d/particles.h5" --set output="$J/select" \
    --set "drop=$JUNK_CLASSES" --overwrite
"$B" -q subset configs/subset.yaml --set input="$J/select/selected.h5" --set output="$J/after_select" \
    --set "thresholds=$TH" --overwrite
TOTAL=$(python3 -c "import json; print(json.load(open('$J/direct/summary.json'))['num_true_particles'])")
echo "| pipeline | threshold | kept | precision | recall |"
echo "|---|---:|---:|---:|---:|"
pr_table "$J/direct/summary.json" "$TOTAL" "classify2d → subset"
pr_table "$J/after_select/summary.json" "$TOTAL" "classify2d → select2d → subset"

# ---- 2. rebalancing
R=$WORK/rebalance
if [ ! -f "$R/c2d/summary.json" ]; then
    rm -rf "$R"; mkdir -p "$R"
    "$B" -q simulate configs/simulate_views2d.yaml --set output="$R/sim" --set seed=2 \
        --set junk_fraction=0 --set "view_weights=[50, 20, 10, 10, 5, 5]"
    "$B" -q classify2d configs/classify2d.yaml --set input="$R/sim/particles.h5" \
        --set output="$R/c2d" --set num_classes=12 --set seed=0
fi
echo "| rebalance_factor | wall s | purity | completeness | superclass sizes before | after |"
echo "|---:|---:|---:|---:|---|---|"
for f in 0 0.5 1; do
    /usr/bin/time -f "%e" -o "$R/time_$f" "$B" -q rebalance2d configs/rebalance2d.yaml \
        --set input="$R/c2d/particles.h5" --set output="$R/f$f" --set num_superclasses=6 \
        --set rebalance_factor=$f --overwrite
    python3 - "$R/f$f/summary.json" "$f" "$(cat "$R/time_$f")" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); t = s["superclasses_vs_ground_truth_views"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {t['purity']:.4f} | {t['completeness']:.4f} | "
      f"{s['superclass_sizes_before']} | {s['superclass_sizes_after']} |")
PY
done
