#!/usr/bin/env bash
# 3D classification accuracy against the oracle (issue 16: "within 0.01 ARI of the oracle").
# For K = 2 and K = 4 classes and each seed in SEEDS: `emclass simulate` hetero3d with K states
# (state s >= 1 lacks domain s; N particles, box 48 at 3 Å, SNR $SNR, domain $DOMAIN of the
# mass, CTF, the config's 15% junk and 5% duplicates; simulation seed = seed), then three
# classify3d runs on 1 rank (filter_res_A 10, K classes, classify seed = seed + 10, the
# config's defaults otherwise):
#   emclass         init_mode simple (random-subset initial classes), or $INIT (e.g. INIT=pca)
#   oracle          the same job started from the simulator's true volumes (init_mode input,
#                   initial_volumes = volumes/state_XX.mrc, low-passed to init_lowpass_A as usual)
#   frozen oracle   the true volumes at 10 Å, no O-EM, one F-EM iteration, class similarity 0:
#                   the labels the true volumes themselves give (what the data allow)
#   emclass / oracle tight  (TIGHT=1, the default) emclass and oracle run to a tighter
#                   convergence: convergence_switch_pct 0.2, no RMS-change criterion, at most
#                   40 F-EM iterations (does the gap survive when both reach their fixed point?)
# ARI vs gt/state on the non-junk particles (summary.json). For the analysis each run's
# alignments3D/class is read back (h5dump) and tabulated against gt/state: class sizes, the
# state each class holds (with its purity), splits (one state the majority of two classes),
# misses (a state the majority of no class), and the ARI between the emclass and oracle labels.
# Prints Markdown tables.
# Usage: bash benches/classify3d_oracle.sh [WORKDIR=/tmp/emclass-bench-c3d-oracle] [SEEDS="1 2 3"] [KS="2 4"]
# Environment: EMCLASS (binary; default: cargo build --release, target/release/emclass),
#   N (3000), SNR (0.1), DOMAIN (0.15), TIGHT (1), INIT (the emclass run's init_mode; simple), KEEP=1 keeps WORKDIR (deleted at the end otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-c3d-oracle}
SEEDS=${2:-"1 2 3"}
KS=${3:-"2 4"}
N=${N:-3000}
SNR=${SNR:-0.1}
DOMAIN=${DOMAIN:-0.15}
TIGHT=${TIGHT:-1}
if [ -z "${EMCLASS:-}" ]; then
    cargo build --release --locked -q
    EMCLASS=$PWD/target/release/emclass
fi
B=$EMCLASS
PY=$PWD/.venv/bin/python
if [ -e "$WORK" ] && [ ! -f "$WORK/.emclass-bench" ]; then
    echo "refusing to use $WORK: not created by this script" >&2; exit 1
fi
mkdir -p "$WORK"; touch "$WORK/.emclass-bench"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

c3d() {  # output extra-args...
    local out=$1; shift
    local t0
    t0=$(date +%s.%N)
    "$B" -q classify3d configs/classify3d.yaml --overwrite --set input="$D/sim/particles.h5" \
        --set output="$out" --set num_classes="$K" --set filter_res_A=10 \
        --set seed=$((SEED + 10)) "$@"
    echo "$(date +%s.%N) - $t0" | bc > "$out.seconds"
    h5dump -d /alignments3D/class -b LE -o "$out.class.bin" "$out/particles.h5" >/dev/null
}
T0=$(date +%s)
for K in $KS; do
    for SEED in $SEEDS; do
        D="$WORK/k${K}_s$SEED"
        mkdir -p "$D"
        "$B" -q simulate configs/simulate_hetero3d.yaml --overwrite --set output="$D/sim" \
            --set num_particles="$N" --set box_px=48 --set psize_A=3.0 --set num_states="$K" \
            --set snr="$SNR" --set domain_mass_fraction="$DOMAIN" --set seed="$SEED"
        h5dump -d /gt/state -b LE -o "$D/state.bin" "$D/sim/particles.h5" >/dev/null
        vols=$(ls "$D"/sim/volumes/state_*.mrc | paste -sd, -)
        c3d "$D/emclass" ${INIT:+--set init_mode=$INIT}
        c3d "$D/oracle" --set init_mode=input --set "initial_volumes=[$vols]"
        c3d "$D/frozen" --set init_mode=input --set "initial_volumes=[$vols]" --set init_lowpass_A=10 \
            --set oem_epochs=0 --set fem_max_iterations=1 --set class_similarity=0
        if [ "$TIGHT" = 1 ]; then
            tight=(--set convergence_switch_pct=0.2 --set rms_density_change_threshold=null --set fem_max_iterations=40)
            c3d "$D/emclass_tight" "${tight[@]}" ${INIT:+--set init_mode=$INIT}
            c3d "$D/oracle_tight" "${tight[@]}" --set init_mode=input --set "initial_volumes=[$vols]"
        fi
    done
done
echo "total: $(( $(date +%s) - T0 )) s for $(( $(echo $KS | wc -w) * $(echo $SEEDS | wc -w) * (TIGHT == 1 ? 5 : 3) )) classify3d runs and their simulations"
echo
"$PY" - "$WORK" "$KS" "$SEEDS" <<'PY'
import json, os, sys
import numpy as np

work, ks, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()

def ari(a, b):
    """Adjusted Rand index of two labelings."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    t = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(t, (a, b), 1)
    c2 = lambda x: (x * (x - 1) / 2).sum()
    n = len(a)
    idx, ea, eb = c2(t), c2(t.sum(1)), c2(t.sum(0))
    exp = ea * eb / (n * (n - 1) / 2)
    return (idx - exp) / ((ea + eb) / 2 - exp)

def describe(cls, state, k):
    """class -> majority state (purity); splits and misses."""
    t = np.zeros((k, k), int)
    np.add.at(t, (cls, state), 1)
    maj = t.argmax(1)
    parts = [f"{c}→s{maj[c]} ({t[c, maj[c]] / max(t[c].sum(), 1):.2f})" for c in range(k)]
    notes = []
    for s in range(k):
        n = (maj == s).sum()
        if n > 1:
            notes.append(f"s{s} split over {n} classes")
        if n == 0:
            notes.append(f"s{s} missed (largest share {t[:, s].max() / t[:, s].sum():.2f} in class {t[:, s].argmax()})")
    return " ".join(parts), "; ".join(notes) or "one class per state"

rows, gaps = [], {k: [] for k in ks}
trows, tgaps = [], {k: [] for k in ks}
for k in ks:
    for seed in seeds:
        d = f"{work}/k{k}_s{seed}"
        state = np.fromfile(f"{d}/state.bin", dtype="<i4")
        keep = state >= 0
        r = {}
        runs = ["emclass", "oracle", "frozen"]
        tight = os.path.exists(f"{d}/emclass_tight/summary.json")
        if tight:
            runs += ["emclass_tight", "oracle_tight"]
        for run in runs:
            s = json.load(open(f"{d}/{run}/summary.json"))
            cls = np.fromfile(f"{d}/{run}.class.bin", dtype="<u4")
            r[run] = dict(ari=s["ari_vs_ground_truth_states"], sizes=[int(x) for x in s["class_assignments"]],
                          its=len(s["iterations"]), secs=float(open(f"{d}/{run}.seconds").read()),
                          cls=cls[keep], stop=s["stop_reason"])
        st = state[keep]
        gap = r["oracle"]["ari"] - r["emclass"]["ari"]
        gaps[k].append((r["emclass"]["ari"], r["oracle"]["ari"], r["frozen"]["ari"], gap))
        if tight:
            et, ot = r["emclass_tight"], r["oracle_tight"]
            trows.append(f"| {k} | {seed} / {int(seed) + 10} | {et['ari']:.4f} | {ot['ari']:.4f} | "
                         f"{ot['ari'] - et['ari']:+.4f} | {ari(et['cls'], ot['cls']):.4f} | {et['sizes']} | {ot['sizes']} | "
                         f"{et['its']} / {ot['its']} | {et['stop'].split(':')[0]} / {ot['stop'].split(':')[0]} | {et['secs']:.1f} / {ot['secs']:.1f} |")
            tgaps[k].append(ot["ari"] - et["ari"])
        em_map, em_notes = describe(r["emclass"]["cls"], st, int(k))
        or_map, or_notes = describe(r["oracle"]["cls"], st, int(k))
        rows.append(f"| {k} | {seed} / {int(seed) + 10} | {r['emclass']['ari']:.4f} | {r['oracle']['ari']:.4f} | "
                    f"{gap:+.4f} | {r['frozen']['ari']:.4f} | {ari(r['emclass']['cls'], r['oracle']['cls']):.4f} | "
                    f"{r['emclass']['sizes']} | {r['oracle']['sizes']} | {em_map}; {em_notes} | {or_map}; {or_notes} | "
                    f"{r['emclass']['its']} / {r['oracle']['its']} | "
                    f"{r['emclass']['secs']:.1f} / {r['oracle']['secs']:.1f} / {r['frozen']['secs']:.1f} |")
print("| K | seed (simulate / classify) | ARI emclass | ARI oracle | gap (oracle − emclass) | ARI frozen oracle | ARI emclass vs oracle labels | emclass class sizes | oracle class sizes | emclass: class → state (purity) | oracle: class → state (purity) | iterations emclass / oracle | s emclass / oracle / frozen |")
print("|---:|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|")
print("\n".join(rows))
print()
print("| K | mean ARI emclass | mean ARI oracle | mean ARI frozen oracle | mean gap | gap s.d. | gap min … max | seeds within 0.01 |")
print("|---:|---:|---:|---:|---:|---:|---|---:|")
for k in ks:
    g = np.array(gaps[k])
    print(f"| {k} | {g[:, 0].mean():.4f} | {g[:, 1].mean():.4f} | {g[:, 2].mean():.4f} | {g[:, 3].mean():+.4f} | "
          f"{g[:, 3].std(ddof=1) if len(g) > 1 else 0:.4f} | {g[:, 3].min():+.4f} … {g[:, 3].max():+.4f} | "
          f"{(g[:, 3] <= 0.01).sum()}/{len(g)} |")
if trows:
    print()
    print("Tight convergence (convergence_switch_pct 0.2, no RMS criterion, at most 40 F-EM iterations):")
    print()
    print("| K | seed (simulate / classify) | ARI emclass tight | ARI oracle tight | gap | ARI emclass vs oracle labels | emclass class sizes | oracle class sizes | iterations emclass / oracle | stop emclass / oracle | s emclass / oracle |")
    print("|---:|---|---:|---:|---:|---:|---|---|---|---|---|")
    print("\n".join(trows))
    print()
    print("| K | mean gap, tight | gap min … max | seeds within 0.01 |")
    print("|---:|---:|---|---:|")
    for k in ks:
        g = np.array(tgaps[k])
        print(f"| {k} | {g.mean():+.4f} | {g.min():+.4f} … {g.max():+.4f} | {(g <= 0.01).sum()}/{len(g)} |")
PY
