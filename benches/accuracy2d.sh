#!/usr/bin/env bash
# 2D classification accuracy over seeds (issue 18): per seed, `emclass simulate` views2d
# (simulation seed = s) then classify2d with the config's defaults and K classes (classify
# seed = s + 100), on 1 rank. Scores from the output particles.h5 (its gt/* fields):
#   good particles (gt/is_junk = 0): ARI, homogeneity and completeness of class vs gt/view;
#   all particles, junk as one more label: purity (Σ_k max_label n_k,label / N), and junk
#     recall: the fraction of junk particles in junk-majority classes;
#   calibration on good particles: expected calibration error of the written best-class
#     probability (alignments2D/class_posterior) in 10 equal-width bins, where a particle is
#     correct when its class's majority view is its view.
# Prints one Markdown row per seed, then the mean, min and max of each column.
# Shapes (SHAPE=...):
#   base  3,000 particles, box 64, 2.5 Å/px, SNR 0.05, CTF, 6 views, 15% junk, K = 10
#   hard  6,000 particles, box 128, 1.25 Å/px (the same 160 Å field), SNR 0.03, CTF,
#         10 views, 30% junk, K = $K (default 20; run K=50 too)
# Usage: bash benches/accuracy2d.sh [WORKDIR=/tmp/emclass-bench-acc2d] [SEEDS="1 2 3 4 5"]
# Environment: SHAPE (base), K (10 base, 20 hard), EXTRA (more --set arguments for
#   classify2d, e.g. EXTRA="--set full_iterations=5"), EMCLASS (binary; default: cargo build
#   --release, target/release/emclass), KEEP=1 keeps WORKDIR, ANALYSE_ONLY=1 (with KEEP=1)
#   re-scores a kept WORKDIR without running anything, ORACLE=1 also scores the true views
#   (benches/oracle2d.py: each good particle against the simulator's views × its CTF, best
#   pose; ~1 min per seed) and prints the ceiling and the gap to it.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-/tmp/emclass-bench-acc2d}
SEEDS=${2:-"1 2 3 4 5"}
SHAPE=${SHAPE:-base}
EXTRA=${EXTRA:-}
if [ -z "${EMCLASS:-}" ]; then
    cargo build --release --locked -q
    EMCLASS=$PWD/target/release/emclass
fi
case "$SHAPE" in
    base) K=${K:-10}; SIM=(--set num_particles=3000 --set box_px=64 --set psize_A=2.5 --set snr=0.05
              --set num_views=6 --set junk_fraction=0.15) ;;
    hard) K=${K:-20}; SIM=(--set num_particles=6000 --set box_px=128 --set psize_A=1.25 --set snr=0.03
              --set num_views=10 --set junk_fraction=0.30) ;;
    *) echo "SHAPE must be base or hard" >&2; exit 2 ;;
esac
if [ -e "$WORK" ] && [ ! -f "$WORK/.emclass-bench" ]; then
    echo "refusing to use $WORK: not created by this script" >&2; exit 1
fi
mkdir -p "$WORK"; touch "$WORK/.emclass-bench"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
PY=$PWD/.venv/bin/python
for S in $SEEDS; do
    [ "${ANALYSE_ONLY:-0}" = 1 ] && break
    D="$WORK/s$S"
    mkdir -p "$D"
    "$EMCLASS" -q simulate configs/simulate_views2d.yaml --overwrite --set output="$D/sim" \
        --set seed="$S" "${SIM[@]}"
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$EMCLASS" -q classify2d configs/classify2d.yaml --overwrite --set input="$D/sim/particles.h5" \
        --set output="$D/c2d" --set num_classes="$K" --set seed=$((S + 100)) $EXTRA
    echo "$(date +%s.%N) - $t0" | bc > "$D/seconds"
    if [ "${ORACLE:-0}" = 1 ] && [ ! -s "$D/oracle" ]; then
        h5dump -d /images -b LE -o "$D/images.f4" "$D/sim/particles.h5" >/dev/null
        for c in accel_kv amp_contrast cs_mm df1_A df2_A df_angle_rad; do
            h5dump -d "/ctf/$c" -b LE -o "$D/ctf_$c.f4" "$D/sim/particles.h5" >/dev/null
        done
        h5dump -d /gt/view -b LE -o "$D/view.i4" "$D/sim/particles.h5" >/dev/null
        h5dump -d /gt/is_junk -b LE -o "$D/is_junk.u4" "$D/sim/particles.h5" >/dev/null
        "$PWD/.venv/bin/python" benches/oracle2d.py "$D" "$(grep -m1 '^psize_A' "$D/sim/config.used.yaml" | awk '{print $2}')" > "$D/oracle"
        rm -f "$D/images.f4" "$D"/ctf_*.f4
    fi
    for f in gt/view:i4 gt/is_junk:u4 alignments2D/class:u4 alignments2D/class_posterior:f4; do
        h5dump -d "/${f%%:*}" -b LE -o "$D/$(basename "${f%%:*}").${f##*:}" "$D/c2d/particles.h5" >/dev/null
    done
done
"$PY" - "$WORK" "$SEEDS" "$SHAPE" "$K" "$EXTRA" <<'PY'
import sys
import numpy as np

work, seeds, shape, k, extra = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]

def table(a, b):
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    t = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(t, (a, b), 1)
    return t

def ari(a, b):
    t = table(a, b)
    c2 = lambda x: (x * (x - 1) / 2).sum()
    n = t.sum()
    idx, ea, eb = c2(t), c2(t.sum(1)), c2(t.sum(0))
    exp = ea * eb / (n * (n - 1) / 2)
    return (idx - exp) / ((ea + eb) / 2 - exp)

def entropy(p):
    p = p[p > 0] / p.sum()
    return -(p * np.log(p)).sum()

def homogeneity_completeness(truth, cls):
    t = table(cls, truth)  # rows: classes, columns: truth
    n = t.sum()
    h_truth, h_cls = entropy(t.sum(0)), entropy(t.sum(1))
    # H(truth | class) and H(class | truth)
    h_t_c = sum(t[r].sum() / n * entropy(t[r]) for r in range(t.shape[0]))
    h_c_t = sum(t[:, c].sum() / n * entropy(t[:, c]) for c in range(t.shape[1]))
    hom = 1.0 if h_truth == 0 else 1 - h_t_c / h_truth
    com = 1.0 if h_cls == 0 else 1 - h_c_t / h_cls
    return hom, com

rows = []
for s in seeds:
    d = f"{work}/s{s}"
    view = np.fromfile(f"{d}/view.i4", "<i4")
    junk = np.fromfile(f"{d}/is_junk.u4", "<u4") > 0
    cls = np.fromfile(f"{d}/class.u4", "<u4")
    prob = np.fromfile(f"{d}/class_posterior.f4", "<f4")
    secs = float(open(f"{d}/seconds").read())
    good = ~junk
    a = ari(view[good], cls[good])
    hom, com = homogeneity_completeness(view[good], cls[good])
    label = np.where(junk, -1, view)
    t = np.zeros((cls.max() + 1, label.max() + 2))
    np.add.at(t, (cls, label + 1), 1)
    purity = t.max(1).sum() / t.sum()
    junk_major = t.argmax(1) == 0
    recall = t[junk_major, 0].sum() / max(t[:, 0].sum(), 1)
    # calibration: a good particle is right when its class's majority (good) view is its view
    tg = np.zeros((cls.max() + 1, view.max() + 1))
    np.add.at(tg, (cls[good], view[good]), 1)
    right = tg.argmax(1)[cls[good]] == view[good]
    p = prob[good]
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(right[bins == b].mean() - p[bins == b].mean()) * (bins == b).mean()
              for b in range(10) if (bins == b).any())
    try:
        orc = float(open(f"{d}/oracle").read().split()[0])
    except (OSError, ValueError, IndexError):
        orc = float("nan")
    rows.append((s, a, hom, com, purity, recall, ece, secs, orc, orc - a))
print(f"classify2d {extra or '(defaults)'}; shape {shape}, K = {k}")
print()
print("| shape | seed (simulate / classify) | ARI good | homogeneity | completeness | purity all | junk recall | ECE | s | oracle ARI | gap |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for s, a, hom, com, pur, rec, ece, secs, orc, gap in rows:
    print(f"| {shape} K={k} | {s} / {int(s) + 100} | {a:.4f} | {hom:.4f} | {com:.4f} | {pur:.4f} | {rec:.3f} | {ece:.3f} | {secs:.1f} | {orc:.4f} | {gap:+.4f} |")
m = np.array([r[1:] for r in rows])
for name, f in [("mean", np.mean), ("min", np.min), ("max", np.max)]:
    v = f(m, axis=0)
    print(f"| {shape} K={k} | **{name}** | {v[0]:.4f} | {v[1]:.4f} | {v[2]:.4f} | {v[3]:.4f} | {v[4]:.3f} | {v[5]:.3f} | {v[6]:.1f} | {v[7]:.4f} | {v[8]:+.4f} |")
PY
