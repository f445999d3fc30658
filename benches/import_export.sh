#!/usr/bin/env bash
# Benchmark and losslessness check of `emclass import --star` then `emclass export`.
#
#   bash benches/import_export.sh [N=20000] [BOX=128] [WORKDIR=/tmp/emclass-bench]
#   env: STACKS (default 20) source stacks; KEEP=1 keeps WORKDIR at the end.
#
# 1. builds target/release/emclass (cargo build --release);
# 2. writes a RELION 3.1 STAR + STACKS float32 MRC stacks of N particles of BOX px with
#    scripts/interop/make_relion.py (the generator holds all N images in memory);
# 3. imports it (float32; float16; gzip 1), each under /usr/bin/time -v;
# 4. exports the float32 dataset to STAR + one MRC stack (--mrcs), and to a STAR alone that
#    keeps the original image references; the gzip dataset is exported to a stack too;
# 5. checks losslessness: every STAR column (check_star.py); image names (same index and
#    stack; identical strings, else a NOTE); the CTF fields exactly as stored (the same float32,
#    angles in radians); every pixel of out.mrcs bit for bit against the source stacks,
#    streamed stack by stack with mrcfile.mmap; the gzip dataset's stack byte for byte;
# 6. imports and exports N/10 particles the same way, so that the peak memory can be
#    compared with N's (streaming: it must not grow with N beyond the metadata table);
# 7. prints a table: step, wall seconds, CPU seconds (user + system), peak RSS (MiB, from
#    "Maximum resident set size"), output size (MiB), and the load average (the machine may be
#    shared: CPU seconds vary less with other load than wall seconds do).
# Any failed step or mismatch stops the script with a non-zero exit and the step's log.
set -euo pipefail

N=${1:-20000}
BOX=${2:-128}
WORKDIR=${3:-/tmp/emclass-bench}
STACKS=${STACKS:-20}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
INTEROP="$ROOT/scripts/interop"
BIN="$ROOT/target/release/emclass"
NSMALL=$(((N + 9) / 10))

die() { echo "FAILED: $*" >&2; exit 1; }
[[ "$N" =~ ^[0-9]+$ && "$N" -ge 1 ]] || die "N must be a positive integer (got '$N')"
[[ "$BOX" =~ ^[0-9]+$ && "$BOX" -ge 2 ]] || die "BOX must be an integer >= 2 (got '$BOX')"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (apt-get install time)"
[[ -x "$PY" ]] || bash scripts/setup_venv.sh

# WORKDIR is wiped: refuse a folder that this script did not make.
if [[ -e "$WORKDIR" ]]; then
    [[ -f "$WORKDIR/.emclass-bench" ]] || die "$WORKDIR exists and was not made by this script; pick another WORKDIR"
    rm -rf "$WORKDIR"
fi
mkdir -p "$WORKDIR/logs"
touch "$WORKDIR/.emclass-bench"
WORKDIR=$(cd "$WORKDIR" && pwd)
cleanup() {
    if [[ "$KEEP" != 1 ]]; then rm -rf "$WORKDIR"; else echo "kept $WORKDIR"; fi
}
trap cleanup EXIT

echo "== cargo build --release"
cargo build --release 2>&1 | tail -n 3
[[ -x "$BIN" ]] || die "$BIN was not built"

ROWS=()
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
size_of() { local t=0 f; for f in "$@"; do t=$((t + $(stat -c %s "$f"))); done; echo "$t"; }

# timed NAME OUTPUTS -- CMD...: runs CMD under /usr/bin/time -v (log in logs/NAME.log),
# records wall time, peak RSS and the total size of OUTPUTS (space-separated, may be "-").
timed() {
    local name=$1 outputs=$2
    shift 3
    echo "== $name: $*"
    if ! /usr/bin/time -v -o "$WORKDIR/logs/$name.time" "$@" >"$WORKDIR/logs/$name.log" 2>&1; then
        tail -n 20 "$WORKDIR/logs/$name.log" >&2
        cat "$WORKDIR/logs/$name.time" >&2 || true
        die "step $name: $*"
    fi
    local wall cpu rss size="-"
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.1f", s }' \
        "$WORKDIR/logs/$name.time")
    cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.1f", s }' "$WORKDIR/logs/$name.time")
    rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$WORKDIR/logs/$name.time")
    if [[ "$outputs" != - ]]; then
        # shellcheck disable=SC2086
        size=$(mib "$(size_of $outputs)")
    fi
    ROWS+=("| $name | $wall | $cpu | $rss | $size |")
    echo "   wall ${wall} s, CPU ${cpu} s, peak RSS ${rss} MiB, output ${size} MiB"
}

S="$WORKDIR/src"
T="$WORKDIR/small"

# --- N particles ---------------------------------------------------------------------------
timed "generate N=$N (python)" "$S/particles.star $S/Particles/*.mrcs" -- \
    "$PY" "$INTEROP/make_relion.py" "$S" --n "$N" --box "$BOX" --stacks "$STACKS"
# (the glob above is expanded by size_of once the files exist)
timed "import f32 N=$N" "$WORKDIR/d.h5" -- \
    "$BIN" import --star "$S/particles.star" --out "$WORKDIR/d.h5"
timed "import f16 N=$N" "$WORKDIR/d_f16.h5" -- \
    "$BIN" import --star "$S/particles.star" --out "$WORKDIR/d_f16.h5" --dtype f16
timed "import gzip1 N=$N" "$WORKDIR/d_gz1.h5" -- \
    "$BIN" import --star "$S/particles.star" --out "$WORKDIR/d_gz1.h5" --gzip 1
timed "export star+mrcs N=$N" "$S/out.star $S/out.mrcs" -- \
    "$BIN" export --in "$WORKDIR/d.h5" --star "$S/out.star" --mrcs "$S/out.mrcs"
timed "export star only N=$N" "$S/ref.star" -- \
    "$BIN" export --in "$WORKDIR/d.h5" --star "$S/ref.star"
timed "export mrcs from gzip1 N=$N" "$S/out_gz1.mrcs" -- \
    "$BIN" export --in "$WORKDIR/d_gz1.h5" --mrcs "$S/out_gz1.mrcs"

# --- N/10 particles (streaming evidence) ---------------------------------------------------
timed "generate N=$NSMALL (python)" "$T/particles.star $T/Particles/*.mrcs" -- \
    "$PY" "$INTEROP/make_relion.py" "$T" --n "$NSMALL" --box "$BOX" --stacks "$STACKS"
timed "import f32 N=$NSMALL" "$WORKDIR/small.h5" -- \
    "$BIN" import --star "$T/particles.star" --out "$WORKDIR/small.h5"
timed "export star+mrcs N=$NSMALL" "$T/out.star $T/out.mrcs" -- \
    "$BIN" export --in "$WORKDIR/small.h5" --star "$T/out.star" --mrcs "$T/out.mrcs"

# --- losslessness --------------------------------------------------------------------------
echo "== check: STAR written without --mrcs (original references) vs the source STAR"
"$PY" "$INTEROP/check_star.py" "$S/particles.star" "$S/ref.star" || die "check_star.py particles.star ref.star"
echo "== check: STAR written with --mrcs vs the source STAR (image names point at out.mrcs)"
"$PY" "$INTEROP/check_star.py" "$S/particles.star" "$S/out.star" --ignore rlnImageName ||
    die "check_star.py particles.star out.star"
echo "== check: image names, CTF fields, pixels"
"$PY" - "$S" <<'EOF' || die "inline losslessness check"
# Exit 1 on a loss (pixels, image index or stack, a CTF value that is not the same float32 as
# stored in the dataset); an image name written with another zero padding (same index, same
# stack) loses nothing and is printed as a NOTE line.
import os, sys
import mrcfile
import numpy as np
import starfile

src = sys.argv[1]
a = starfile.read(os.path.join(src, "particles.star"), always_dict=True)
ref = starfile.read(os.path.join(src, "ref.star"), always_dict=True)
out = starfile.read(os.path.join(src, "out.star"), always_dict=True)
pa, pr, po = a["particles"], ref["particles"], out["particles"]
n = len(pa)
bad, notes = [], []


def split(names):
    idx = np.array([int(s.split("@", 1)[0]) for s in names])
    return idx, np.array([s.split("@", 1)[1] for s in names], dtype=object)


# Image names. ref.star (written next to the source, no --mrcs) must name the same images.
na, nr = list(pa["rlnImageName"]), list(pr["rlnImageName"])
if len(na) != len(nr):
    bad.append(f"rlnImageName: {len(na)} rows in particles.star, {len(nr)} in ref.star")
else:
    (ia, sa), (ir, sr) = split(na), split(nr)
    wrong = np.flatnonzero((ia != ir) | (sa != sr))
    if len(wrong):
        bad.append(f"rlnImageName: {len(wrong)} rows name another image, first row {wrong[0]}: "
                   f"{na[wrong[0]]!r} vs {nr[wrong[0]]!r}")
    same_str = sum(x == y for x, y in zip(na, nr))
    print(f"image names: {n - len(wrong)} of {n} name the same image (index and stack); "
          f"{same_str} of {n} are identical strings")
    if same_str != n:
        k = next(i for i, (x, y) in enumerate(zip(na, nr)) if x != y)
        notes.append(f"rlnImageName: {n - same_str} of {n} strings differ only in the index's zero padding "
                     f"(row {k}: {na[k]!r} in particles.star, {nr[k]!r} in ref.star)")
io, so = split(list(po["rlnImageName"]))
if not ((io == np.arange(1, n + 1)).all() and (so == "out.mrcs").all()):
    bad.append(f"out.star: rlnImageName is not 1..{n}@out.mrcs in order: {list(po['rlnImageName'][:2])}")


# CTF fields: the dataset keeps them as float32 (the angles in radians: ctf/df_angle_rad,
# ctf/phase_shift_rad, converted as Rust's f64::to_radians then rounded to f32), so A and B
# must be the same float32 value once converted to the stored units.
RADIANS = {"rlnDefocusAngle", "rlnPhaseShift"}


def stored(c, v):
    return (v * (np.pi / 180.0) if c in RADIANS else v).astype(np.float32)


def ctf_check(name, ta, tb, cols, label):
    for c in cols:
        if c not in ta.columns:
            continue
        if c not in tb.columns:
            bad.append(f"{label} {name}.{c}: missing")
            continue
        x, y = ta[c].to_numpy(np.float64), tb[c].to_numpy(np.float64)
        eq = stored(c, x).view(np.uint32) == stored(c, y).view(np.uint32)
        dev = float(np.max(np.abs(x - y))) if len(x) else 0.0
        unit = "float32 radians" if c in RADIANS else "float32"
        status = f"equal as {unit}" if eq.all() else f"{int((~eq).sum())} of {len(x)} DIFFER as {unit} (first row {int(np.argmin(eq))})"
        print(f"  {name}.{c}: {status}; largest difference to the source value {dev:.3g}")
        if not eq.all():
            bad.append(f"{label} {name}.{c}: {status}")


ctf_p = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnCtfBfactor",
         "rlnCtfScalefactor", "rlnOpticsGroup"]
ctf_o = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize"]
for label, t in (("ref.star", ref), ("out.star", out)):
    print(f"CTF fields, particles.star vs {label}:")
    ctf_check("particles", pa, t["particles"], ctf_p, label)
    ctf_check("optics", a["optics"], t["optics"], ctf_o, label)

# Pixels: every source image N@stack vs out.mrcs[row], bit for bit, one stack at a time (mmap).
with mrcfile.mmap(os.path.join(src, "out.mrcs"), mode="r") as mo:
    o = mo.data
    if o.shape[0] != n or o.dtype != np.float32:
        bad.append(f"out.mrcs: shape {o.shape} dtype {o.dtype}, want ({n}, ...) float32")
    else:
        idx, stacks = split(na)
        idx = idx - 1
        checked = 0
        for stack in dict.fromkeys(stacks):
            rows = np.flatnonzero(stacks == stack)
            with mrcfile.mmap(os.path.join(src, stack), mode="r") as ms:
                d = ms.data if ms.data.ndim == 3 else ms.data[None]
                if d.shape[1:] != o.shape[1:] or d.dtype != np.float32:
                    bad.append(f"{stack}: images {d.shape[1:]} {d.dtype} vs out.mrcs {o.shape[1:]} {o.dtype}")
                    continue
                for lo in range(0, len(rows), 1024):
                    r = rows[lo:lo + 1024]
                    same = np.asarray(d[idx[r]]).view(np.uint32) == np.asarray(o[r]).view(np.uint32)
                    if not same.all():
                        k = int(np.flatnonzero(~same.reshape(len(r), -1).all(axis=1))[0])
                        bad.append(f"pixels: row {r[k]} ({na[r[k]]}) differs from out.mrcs[{r[k]}] "
                                   f"({int((~same).sum())} pixels differ in rows {r[0]}..{r[-1]})")
                        break
                    checked += len(r)
        print(f"pixels: {checked} of {n} images bit-identical between the source stacks and out.mrcs "
              f"({o.shape[1]}x{o.shape[2]} float32, voxel {float(mo.voxel_size.x):.4f} A)")

for m in notes:
    print("NOTE:", m)
for m in bad:
    print("MISMATCH:", m)
if bad:
    sys.exit(1)
print("OK: lossless: same images in the same order, bit-identical pixels, every CTF field equal "
      f"as float32{' (see the NOTE lines)' if notes else ''}")
EOF
echo "== check: the gzip 1 dataset exports the same stack, byte for byte"
cmp "$S/out.mrcs" "$S/out_gz1.mrcs" || die "cmp out.mrcs out_gz1.mrcs"
echo "OK: out_gz1.mrcs == out.mrcs"
echo "== check: N/10 round trip"
"$PY" "$INTEROP/check_star.py" "$T/particles.star" "$T/out.star" --ignore rlnImageName ||
    die "check_star.py small"

# --- table ---------------------------------------------------------------------------------
echo
echo "emclass import/export, N=$N, BOX=$BOX, $STACKS stacks ($(date -u +%Y-%m-%d), $(nproc) cores," \
    "load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| step | wall s | CPU s (user+sys) | peak RSS MiB | output MiB |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
