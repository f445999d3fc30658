#!/usr/bin/env bash
# Strong and weak scaling of emclass classify2d over MPI ranks. Writes scaling.csv,
# scaling.md (table) and scaling.svg (plot: speed-up and efficiency against ranks) into WORK.
#   strong: one dataset of N particles on 1, 2, 4, ... ranks (up to MAX_RANKS)
#   weak:   PER_RANK particles per rank (a simulated dataset of n·PER_RANK particles)
# Under Slurm (inside an allocation) the ranks start with srun, elsewhere with mpirun.
# Usage: bash slurm/scaling.sh [MAX_RANKS=2] [N=20000] [PER_RANK=10000] [BOX=64] [K=50]
#        [ITERS=10] [MAX_RES=8] [WORK=scaling_out] [EMCLASS=target/release/emclass]
# The classify2d runs use configs/classify2d.yaml with num_classes=K, online_em_iterations=ITERS
# and full_iterations=1; wall times come from summary.json (the iterations' seconds, so the
# one-off simulation and loading are excluded) and from the launcher.
set -euo pipefail
MAX_RANKS=${MAX_RANKS:-2}
N=${N:-20000}
PER_RANK=${PER_RANK:-10000}
BOX=${BOX:-64}
K=${K:-50}
ITERS=${ITERS:-10}
WORK=${WORK:-scaling_out}
EMCLASS=${EMCLASS:-target/release/emclass}
CONFIG=${CONFIG:-configs/classify2d.yaml}
mkdir -p "$WORK"
launch() { # launch RANKS args...
    local n=$1; shift
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        srun --ntasks="$n" "$EMCLASS" "$@"
    else
        mpirun --oversubscribe --allow-run-as-root -n "$n" "$EMCLASS" "$@"
    fi
}
ranks=()
r=1
while [ "$r" -le "$MAX_RANKS" ]; do ranks+=("$r"); r=$((r * 2)); done
[ "${ranks[-1]}" -eq "$MAX_RANKS" ] || ranks+=("$MAX_RANKS")
sim() { # sim PARTICLES -> path of a simulated dataset of that size (made once)
    local d="$WORK/sim_$1"
    if [ ! -f "$d/particles.h5" ]; then
        "$EMCLASS" -q simulate configs/simulate_views2d.yaml --set output="$d" \
            --set num_particles="$1" --set box_px="$BOX" --set psize_A=2 >&2
    fi
    echo "$d/particles.h5"
}
echo "mode,ranks,particles,wall_s,iteration_s" > "$WORK/scaling.csv"
run() { # run MODE RANKS PARTICLES
    local mode=$1 n=$2 p=$3 out="$WORK/${1}_$2"
    local start end
    local input
    input=$(sim "$p")
    start=$(date +%s.%N)
    launch "$n" -q classify2d "$CONFIG" --set input="$input" --set output="$out" \
        --set num_classes="$K" --set online_em_iterations="$ITERS" --set full_iterations=1 \
        --set max_res_A="${MAX_RES:-8}" \
        --overwrite
    end=$(date +%s.%N)
    python3 - "$out/summary.json" "$mode" "$n" "$p" "$start" "$end" >> "$WORK/scaling.csv" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
it = sum(r["seconds"] for r in s["iterations"])
print(f"{sys.argv[2]},{sys.argv[3]},{sys.argv[4]},{float(sys.argv[6]) - float(sys.argv[5]):.2f},{it:.2f}")
PY
}
for n in "${ranks[@]}"; do run strong "$n" "$N"; done
for n in "${ranks[@]}"; do run weak "$n" $((PER_RANK * n)); done
python3 - "$WORK" <<'PY'
import csv, sys
w = sys.argv[1]
rows = list(csv.DictReader(open(f"{w}/scaling.csv")))
base = {m: next(float(r["iteration_s"]) for r in rows if r["mode"] == m and r["ranks"] == "1") for m in ("strong", "weak")}
md = ["| mode | ranks | particles | wall s | iterations s | speed-up | efficiency |", "|---|---:|---:|---:|---:|---:|---:|"]
pts = {"strong": [], "weak": []}
for r in rows:
    n, t = int(r["ranks"]), float(r["iteration_s"])
    sp = base[r["mode"]] / t * (n if r["mode"] == "weak" else 1)
    eff = sp / n
    pts[r["mode"]].append((n, eff))
    md.append(f"| {r['mode']} | {n} | {r['particles']} | {r['wall_s']} | {t:.2f} | {sp:.2f} | {eff:.0%} |")
open(f"{w}/scaling.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
# Efficiency against ranks as a small SVG (no plotting library needed).
W, H, M = 480, 320, 50
nmax = max(max(n for n, _ in p) for p in pts.values() if p)
x = lambda n: M + (W - 2 * M) * ((n - 1) / max(nmax - 1, 1))
y = lambda e: H - M - (H - 2 * M) * min(max(e, 0), 1.2) / 1.2
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{M}" y1="{H-M}" x2="{W-M}" y2="{H-M}" stroke="black"/><line x1="{M}" y1="{M}" x2="{M}" y2="{H-M}" stroke="black"/>',
       f'<text x="{W/2}" y="{H-12}" text-anchor="middle">MPI ranks</text>',
       f'<text x="14" y="{H/2}" transform="rotate(-90 14 {H/2})" text-anchor="middle">parallel efficiency</text>',
       f'<line x1="{M}" y1="{y(1)}" x2="{W-M}" y2="{y(1)}" stroke="#999" stroke-dasharray="4"/>',
       f'<text x="{M-6}" y="{y(1)+4}" text-anchor="end">100%</text><text x="{M-6}" y="{y(0)+4}" text-anchor="end">0%</text>']
for (mode, colour) in (("strong", "#1f77b4"), ("weak", "#ff7f0e")):
    p = sorted(pts[mode])
    svg.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (colour, " ".join(f"{x(n):.1f},{y(e):.1f}" for n, e in p)))
    for n, e in p:
        svg.append(f'<circle cx="{x(n):.1f}" cy="{y(e):.1f}" r="3" fill="{colour}"/><text x="{x(n):.1f}" y="{H-M+16}" text-anchor="middle">{n}</text>')
    svg.append(f'<text x="{W-M}" y="{M + (14 if mode == "weak" else 0)}" fill="{colour}" text-anchor="end">{mode}</text>')
svg.append("</svg>")
open(f"{w}/scaling.svg", "w").write("\n".join(svg) + "\n")
PY
