#!/usr/bin/env python3
"""Writes a small RELION 3.1 particle set with the reference Python libraries.

    make_relion.py OUTDIR [--n N] [--box B] [--psize P] [--seed S] [--optics-groups G]
                          [--stacks K]

Writes, with `starfile` and `mrcfile`:
  OUTDIR/particles.star           data_optics + data_particles (RELION 3.1), tab-separated as
                                  starfile writes it
  OUTDIR/Particles/stack_XX.mrcs  K float32 stacks (default 2) holding the N images split in
                                  order, voxel size P

The STAR and the stacks are themselves the expected values for the round-trip tests:
rlnImageName is "000001@Particles/stack_00.mrcs" (1-based, 6 digits, path relative to
OUTDIR, as RELION writes it). Columns: optics (rlnOpticsGroup, rlnOpticsGroupName,
rlnAmplitudeContrast, rlnSphericalAberration, rlnVoltage, rlnImagePixelSize, rlnImageSize,
rlnImageDimensionality, rlnCtfDataAreCtfPremultiplied); particles (rlnImageName,
rlnMicrographName, rlnCoordinateX/Y, rlnOpticsGroup, rlnDefocusU/V, rlnDefocusAngle,
rlnPhaseShift, rlnCtfBfactor, rlnCtfScalefactor, rlnAngleRot/Tilt/Psi,
rlnOriginXAngst/YAngst, rlnClassNumber). All values come from one seeded generator, so
the same arguments give the same files.
"""

import argparse
import os

import mrcfile
import numpy as np
import pandas as pd
import starfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--n", type=int, default=20, help="number of particles (default 20)")
    ap.add_argument("--box", type=int, default=32, help="image size in pixels (default 32)")
    ap.add_argument("--psize", type=float, default=1.5, help="pixel size in Å (default 1.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optics-groups", type=int, default=1, help="number of optics groups (default 1)")
    ap.add_argument("--stacks", type=int, default=2, help="number of .mrcs stacks (default 2)")
    ap.add_argument("--classes", type=int, default=4, help="rlnClassNumber runs over 1..K (default 4)")
    args = ap.parse_args()
    if args.n < 1 or args.box < 2 or args.psize <= 0 or args.optics_groups < 1 or args.stacks < 1:
        ap.error("need --n >= 1, --box >= 2, --psize > 0, --optics-groups >= 1, --stacks >= 1")

    rng = np.random.default_rng(args.seed)
    n, box, psize = args.n, args.box, args.psize
    os.makedirs(os.path.join(args.outdir, "Particles"), exist_ok=True)

    # Images: a Gaussian blob at a random offset plus noise, float32.
    yy, xx = np.mgrid[0:box, 0:box].astype(np.float32) - box / 2
    images = np.empty((n, box, box), dtype=np.float32)
    for i in range(n):
        cx, cy = rng.uniform(-box / 8, box / 8, size=2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (box / 8) ** 2))
        images[i] = (blob + rng.normal(0, 0.5, size=(box, box))).astype(np.float32)

    # Split the images over the stacks in order.
    bounds = np.linspace(0, n, args.stacks + 1).round().astype(int)
    names = []
    for k in range(args.stacks):
        rel = f"Particles/stack_{k:02d}.mrcs"
        lo, hi = bounds[k], bounds[k + 1]
        with mrcfile.new(os.path.join(args.outdir, rel), overwrite=True) as m:
            m.set_data(images[lo:hi] if hi > lo else np.zeros((0, box, box), np.float32))
            m.set_image_stack()
            m.voxel_size = psize
        names += [f"{j + 1:06d}@{rel}" for j in range(hi - lo)]

    groups = np.arange(1, args.optics_groups + 1)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": groups,
            "rlnOpticsGroupName": [f"opticsGroup{g}" for g in groups],
            "rlnAmplitudeContrast": np.full(len(groups), 0.1),
            "rlnSphericalAberration": 2.7 - 0.1 * (groups - 1),
            "rlnVoltage": 300.0 - 100.0 * ((groups - 1) % 2),
            "rlnImagePixelSize": np.full(len(groups), psize),
            "rlnImageSize": np.full(len(groups), box),
            "rlnImageDimensionality": np.full(len(groups), 2),
            "rlnCtfDataAreCtfPremultiplied": np.zeros(len(groups), dtype=int),
        }
    )

    mic_count = max(1, n // 5)
    mic = rng.integers(0, mic_count, size=n)
    dfu = rng.uniform(8000, 30000, size=n)
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": [f"MotionCorr/job002/Movies/mic_{m:04d}.mrc" for m in mic],
            "rlnCoordinateX": rng.uniform(50, 4000, size=n).round(2),
            "rlnCoordinateY": rng.uniform(50, 4000, size=n).round(2),
            "rlnOpticsGroup": rng.integers(1, args.optics_groups + 1, size=n),
            "rlnDefocusU": dfu,
            "rlnDefocusV": dfu - rng.uniform(0, 1500, size=n),
            "rlnDefocusAngle": rng.uniform(-180, 180, size=n),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnAngleRot": rng.uniform(-180, 180, size=n),
            "rlnAngleTilt": rng.uniform(5, 175, size=n),
            "rlnAnglePsi": rng.uniform(-180, 180, size=n),
            "rlnOriginXAngst": rng.uniform(-5, 5, size=n),
            "rlnOriginYAngst": rng.uniform(-5, 5, size=n),
            "rlnClassNumber": rng.integers(1, args.classes + 1, size=n),
        }
    )
    star = os.path.join(args.outdir, "particles.star")
    starfile.write({"optics": optics, "particles": particles}, star)
    print(f"wrote {star} ({n} particles, {args.stacks} stacks of {box}x{box}, {psize} Å/px)")


if __name__ == "__main__":
    main()
