#!/usr/bin/env python3
"""Checks that two MRC files (stacks or volumes) hold identical pixels, read with `mrcfile`.

    check_mrcs.py A.mrcs B.mrcs [--any-dtype] [--voxel-rtol R] [--xy-voxel-only]

Both files are opened in mrcfile's strict mode (a malformed header fails). The pixel arrays
must have the same shape and be exactly equal (NaN equals NaN), with the same data type
unless --any-dtype (then values are compared after conversion to float64). The voxel sizes
(x, y, z; x and y only with --xy-voxel-only, since writers disagree on z for image stacks)
must agree within --voxel-rtol (default 1e-6, a float32 rounding). Exit 0 when
they agree ("OK: ..."), 1 with "MISMATCH: ..." on the first difference, 2 on errors.
"""

import argparse

import mrcfile
import numpy as np

from _common import Mismatch, run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--any-dtype", action="store_true")
    ap.add_argument("--voxel-rtol", type=float, default=1e-6)
    ap.add_argument("--xy-voxel-only", action="store_true")
    args = ap.parse_args()

    with mrcfile.open(args.a, permissive=False) as ma, mrcfile.open(args.b, permissive=False) as mb:
        da, db = ma.data, mb.data
        va = np.array([ma.voxel_size.x, ma.voxel_size.y, ma.voxel_size.z], dtype=np.float64)
        vb = np.array([mb.voxel_size.x, mb.voxel_size.y, mb.voxel_size.z], dtype=np.float64)
        if da.shape != db.shape:
            raise Mismatch(f"pixels: shape {da.shape} vs {db.shape}")
        if da.dtype != db.dtype and not args.any_dtype:
            raise Mismatch(f"pixels: data type {da.dtype} vs {db.dtype}")
        fa, fb = da.astype(np.float64), db.astype(np.float64)
        same = (fa == fb) | (np.isnan(fa) & np.isnan(fb))
        if not same.all():
            at = tuple(int(i) for i in np.argwhere(~same)[0])
            raise Mismatch(f"pixels: at {at}: A={fa[at].item()!r} B={fb[at].item()!r} ({int((~same).sum())} pixels differ)")
        if args.xy_voxel_only:
            va, vb = va[:2], vb[:2]
        if not np.allclose(va, vb, rtol=args.voxel_rtol, atol=0):
            raise Mismatch(f"voxel_size: A={tuple(float(x) for x in va)} B={tuple(float(x) for x in vb)}")
        return f"{da.shape} {da.dtype} pixels identical, voxel size {tuple(float(x) for x in va)}"


if __name__ == "__main__":
    run(main)
