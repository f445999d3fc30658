#!/usr/bin/env bash
# Every GPU check and benchmark (issue 17), in one run on a machine with an NVIDIA GPU and no
# Rust toolchain. Prepare on the development machine:
#   bash scripts/gpu_bundle.sh          # gpu-bundle/: stripped binary, unit-test binary, libs
# then run with the device tool (carry ["gpu-bundle"]; about 6-8 minutes):
#   bash benches/gpu.sh
# Everything it prints also goes to $OUT (default /tmp/emclass-gpu, or the tool's $OUT).
#  1. the device (nvidia-smi);
#  2. the GPU unit tests with EMCLASS_REQUIRE_GPU=1 (a skip is a failure): the kernels
#     compile (NVRTC), the self-test, SGEMM vs the CPU, and per EM phase the CUDA backend
#     against the CPU reference on fixed inputs (2D and 3D: responsibilities within 1e-4,
#     log-likelihoods within 1e-4 of their range, statistics within 1e-4 of the largest)
#     and bit-identical repeats;
#  3. SGEMM throughput (8192³, transfers included);
#  4. classify2d and classify3d end to end, CPU backend against CUDA backend on the same
#     simulated sets (ARI vs ground truth, wall and per-iteration seconds), and classify2d
#     with gpu_tf32 (TF32 tensor-core products) against FP32;
#  5. classify2d at scale on the GPU only (N2BIG particles, K2BIG classes), capped at
#     BIGCAP seconds: full-pass seconds and particle·class·pose evaluations per second.
# Environment: OUT, N2 (4000), K2 (20), N3 (4000), N2BIG (100000), K2BIG (100), BIGCAP (240).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=$PWD/gpu-bundle
OUT=${OUT:-/tmp/emclass-gpu}
N2=${N2:-4000}; K2=${K2:-20}; N3=${N3:-4000}
N2BIG=${N2BIG:-100000}; K2BIG=${K2BIG:-100}; BIGCAP=${BIGCAP:-240}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, q, "lib") for p in nvidia.__path__ for q in os.listdir(p)))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH="$BUNDLE/lib:${LD_LIBRARY_PATH:-}"
export EMCLASS_REQUIRE_GPU=1 EMCLASS_REQUIRE_NVRTC=1 EMCLASS_KERNEL_CACHE="$OUT/kernels"
B="$BUNDLE/emclass"
T="$BUNDLE/emclass-tests"
W=$(mktemp -d)

echo "## 1. device"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || true
nproc

echo "## 2. GPU unit tests (EMCLASS_REQUIRE_GPU=1)"
"$T" --test-threads=1 nvrtc cuda gpu backend:: 2>&1 | grep -E "^test |test result|panicked|skipped|differ" | tee "$OUT/unit.txt"

echo "## 3. SGEMM throughput"
"$T" --ignored --nocapture sgemm_throughput 2>&1 | grep -E "SGEMM|panicked"

summary() {  # label summary.json seconds
    python3 - "$@" <<'PY'
import json, sys
label, path, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = json.load(open(path))
ari = s.get("ari_vs_ground_truth_views", s.get("ari_vs_ground_truth_states"))
its = s["iterations"]
full = [i for i in its if i["phase"] == "full"] or its[-1:]
f = full[-1]
n = s.get("num_particles", f.get("particles"))
line = f"| {label} | {n} | {s.get('num_classes', '?')} | {ari if ari is None else round(ari, 4)} | {secs:.1f} | {f['seconds']:.2f} | {f.get('estep_seconds', 0):.2f} |"
if "n_rotations" in f:
    ev = f["particles"] * s["num_classes"] * f["n_rotations"] * f["n_shifts"] / f["seconds"]
    line += f" {ev:.3g} |"
else:
    line += " |"
print(line)
PY
}
run() {  # label out job config args...
    local label=$1 out=$2; shift 2
    local t0 t1
    t0=$(date +%s.%N)
    if "$B" "$@" --set output="$out" --overwrite > "$out.log" 2>&1; then
        t1=$(date +%s.%N)
        summary "$label" "$out/summary.json" "$(echo "$t1 - $t0" | bc)"
        grep -h "backend:" "$out.log" | head -2 | sed 's/^/    /'
    else
        echo "| $label | failed: $(grep -m1 error: "$out.log") | | | | | | |"
    fi
}

echo "## 4. end to end, CPU vs CUDA"
"$B" -q simulate configs/simulate_views2d.yaml --set output="$W/v2" --set num_particles="$N2" \
    --set box_px=64 --set psize_A=2.5 --set duplicate_fraction=0 --overwrite
"$B" -q simulate configs/simulate_hetero3d.yaml --set output="$W/h3" --set num_particles="$N3" \
    --set box_px=64 --set psize_A=2.5 --set num_states=2 --overwrite
echo "| run | particles | K | ARI vs truth | wall s | last full iteration s | of which E-step s | evaluations/s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for b in cpu cuda; do
    run "classify2d $b" "$W/c2d_$b" classify2d configs/classify2d.yaml --set input="$W/v2/particles.h5" \
        --set num_classes="$K2" --set full_iterations=2 --set backend="$b"
done
run "classify2d cuda tf32" "$W/c2d_tf32" classify2d configs/classify2d.yaml --set input="$W/v2/particles.h5" \
    --set num_classes="$K2" --set full_iterations=2 --set backend=cuda --set gpu_tf32=true
for b in cpu cuda; do
    run "classify3d $b" "$W/c3d_$b" classify3d configs/classify3d.yaml --set input="$W/h3/particles.h5" \
        --set num_classes=2 --set filter_res_A=10 --set backend="$b"
done
for b in cpu cuda; do
    for f in "$W/c2d_$b" "$W/c3d_$b"; do cp "$f/summary.json" "$OUT/$(basename "$f").summary.json" 2>/dev/null; done
done

echo "## 5. classify2d at scale on the GPU (capped at $BIGCAP s)"
"$B" -q simulate configs/simulate_views2d.yaml --set output="$W/big" --set num_particles="$N2BIG" \
    --set duplicate_fraction=0 --overwrite
t0=$(date +%s.%N)
timeout "$BIGCAP" "$B" classify2d configs/classify2d.yaml --set input="$W/big/particles.h5" \
    --set output="$W/c2d_big" --set num_classes="$K2BIG" --set backend=cuda --overwrite > "$W/big.log" 2>&1
rc=$?
if [ $rc = 0 ]; then
    summary "classify2d cuda, box 128" "$W/c2d_big/summary.json" "$(echo "$(date +%s.%N) - $t0" | bc)"
else
    echo "classify2d at scale: exit $rc (124 = hit the $BIGCAP s cap); last log lines:"
    tail -5 "$W/big.log"
fi
grep -hE "iteration|backend" "$W/big.log" | tail -8 > "$OUT/big.txt"
rm -rf "$W"
