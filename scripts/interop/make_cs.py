#!/usr/bin/env python3
"""Writes a CryoSPARC .cs particle file with cryosparc-tools (`cryosparc.dataset.Dataset`).

    make_cs.py OUT.cs [--n N] [--box B] [--psize P] [--seed S] [--stacks K] [--classes C]
               [--classes3d K3]

The file is what `Dataset.save` writes by default (NPY 1.0 record array, strings as |S).
Fields, in CryoSPARC's names and units:
  uid (u8, random, from Dataset.allocate)
  blob/path (str "J1/imported/stack_XX.mrcs"), blob/idx (u4, 0-based), blob/shape (u4 x2),
  blob/psize_A, blob/sign (f4)
  ctf/type (str), ctf/exp_group_id (u4), ctf/accel_kv, ctf/cs_mm, ctf/amp_contrast,
  ctf/df1_A, ctf/df2_A, ctf/df_angle_rad, ctf/phase_shift_rad, ctf/scale, ctf/bfactor (f4),
  ctf/shift_A, ctf/tilt_A, ctf/trefoil_A (f4 x2), ctf/tetra_A, ctf/anisomag (f4 x4)
  location/micrograph_uid (u8), location/micrograph_path (str), location/micrograph_shape
  (u4 x2), location/micrograph_psize_A, location/center_x_frac, location/center_y_frac (f4)
  alignments2D/class (u4), alignments2D/pose (f4 rad), alignments2D/shift (f4 x2 px),
  alignments2D/class_posterior, alignments2D/psize_A (f4)
  alignments3D/pose (f4 x3, axis-angle rad), alignments3D/shift (f4 x2 px),
  alignments3D/psize_A, alignments3D/class_posterior (f4), alignments3D/class (u4)
With --classes3d K3 (K3 >= 1), the particles carry a 3D classification into K3 classes in the
layout of CryoSPARC's Heterogeneous Refinement / 3D Classification outputs: per class N =
0..K3-1 the group alignments_class_N/ with class_posterior (f4, the probability of class N;
the K3 of a particle sum to 1, Dirichlet(0.5)-distributed), class (u4, = N), class_ess (f4),
pose (f4 x3), shift (f4 x2), psize_A and error (f4); alignments3D/class is the most probable
class, alignments3D/class_posterior its probability and alignments3D/class_ess (f4) the
effective number of classes 1 / sum_N p_N^2.
With --stacks K (K >= 1), also writes the K float32 MRC stacks that blob/path names, under
the folder of OUT.cs (which plays CryoSPARC's project folder), voxel size P; the images are
split over the stacks in order. Same arguments give the same file (uids included).
"""

import argparse
import os

import numpy as np
from cryosparc.dataset import Dataset

FIELDS = [
    ("blob/path", "O"),
    ("blob/idx", "u4"),
    ("blob/shape", "u4", (2,)),
    ("blob/psize_A", "f4"),
    ("blob/sign", "f4"),
    ("ctf/type", "O"),
    ("ctf/exp_group_id", "u4"),
    ("ctf/accel_kv", "f4"),
    ("ctf/cs_mm", "f4"),
    ("ctf/amp_contrast", "f4"),
    ("ctf/df1_A", "f4"),
    ("ctf/df2_A", "f4"),
    ("ctf/df_angle_rad", "f4"),
    ("ctf/phase_shift_rad", "f4"),
    ("ctf/scale", "f4"),
    ("ctf/bfactor", "f4"),
    ("ctf/shift_A", "f4", (2,)),
    ("ctf/tilt_A", "f4", (2,)),
    ("ctf/trefoil_A", "f4", (2,)),
    ("ctf/tetra_A", "f4", (4,)),
    ("ctf/anisomag", "f4", (4,)),
    ("location/micrograph_uid", "u8"),
    ("location/micrograph_path", "O"),
    ("location/micrograph_shape", "u4", (2,)),
    ("location/micrograph_psize_A", "f4"),
    ("location/center_x_frac", "f4"),
    ("location/center_y_frac", "f4"),
    ("alignments2D/class", "u4"),
    ("alignments2D/pose", "f4"),
    ("alignments2D/shift", "f4", (2,)),
    ("alignments2D/class_posterior", "f4"),
    ("alignments2D/psize_A", "f4"),
    ("alignments3D/pose", "f4", (3,)),
    ("alignments3D/shift", "f4", (2,)),
    ("alignments3D/psize_A", "f4"),
    ("alignments3D/class_posterior", "f4"),
    ("alignments3D/class", "u4"),
]

# What a 3D classification adds to alignments3D besides class and class_posterior.
PER_CLASS_3D_EXTRA = [("alignments3D/class_ess", "f4")]


def per_class_fields(k):
    """CryoSPARC's alignments_class_N/ groups (a subset of the alignments3D fields) for k classes."""
    out = []
    for c in range(k):
        g = f"alignments_class_{c}"
        out += [
            (f"{g}/pose", "f4", (3,)),
            (f"{g}/shift", "f4", (2,)),
            (f"{g}/psize_A", "f4"),
            (f"{g}/error", "f4"),
            (f"{g}/class_posterior", "f4"),
            (f"{g}/class", "u4"),
            (f"{g}/class_ess", "f4"),
        ]
    return out


def set_per_class(d, rng, k, psize):
    """Fills the per-class fields and the best-class alignments3D fields (see the docstring)."""
    n = len(d)
    probs = rng.dirichlet([0.5] * k, size=n).astype(np.float32)
    ess = (1.0 / np.sum(probs.astype(np.float64) ** 2, axis=1)).astype(np.float32)
    for c in range(k):
        g = f"alignments_class_{c}"
        d[f"{g}/pose"] = d["alignments3D/pose"]
        d[f"{g}/shift"] = d["alignments3D/shift"]
        d[f"{g}/psize_A"] = psize
        d[f"{g}/error"] = rng.uniform(1e4, 2e4, size=n)
        d[f"{g}/class_posterior"] = probs[:, c]
        d[f"{g}/class"] = c
        d[f"{g}/class_ess"] = ess
    best = np.argmax(probs, axis=1)
    d["alignments3D/class"] = best
    d["alignments3D/class_posterior"] = probs[np.arange(n), best]
    d["alignments3D/class_ess"] = ess


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=20, help="number of particles (default 20)")
    ap.add_argument("--box", type=int, default=32, help="image size in pixels (default 32)")
    ap.add_argument("--psize", type=float, default=1.5, help="pixel size in Å (default 1.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stacks", type=int, default=0, help="write K MRC stacks (default 0: name 2, write none)")
    ap.add_argument("--classes", type=int, default=4, help="alignments2D/class runs over 0..C-1 (default 4)")
    ap.add_argument("--classes3d", type=int, default=0, help="add CryoSPARC's per-class 3D fields for K3 classes (default 0: none)")
    args = ap.parse_args()
    if args.n < 1 or args.box < 2 or args.psize <= 0 or args.stacks < 0 or args.classes < 1 or args.classes3d < 0:
        ap.error("need --n >= 1, --box >= 2, --psize > 0, --stacks >= 0, --classes >= 1, --classes3d >= 0")

    rng = np.random.default_rng(args.seed)
    n, box, psize = args.n, args.box, args.psize
    fields = FIELDS + (PER_CLASS_3D_EXTRA + per_class_fields(args.classes3d) if args.classes3d else [])
    d = Dataset.allocate(n, fields)
    d["uid"] = rng.integers(1, 2**63, size=n, dtype=np.uint64) * 2 + 1  # odd, up to 2^64 - 1

    n_stacks = args.stacks or 2  # blob/path names 2 stacks even when none is written
    bounds = np.linspace(0, n, n_stacks + 1).round().astype(int)
    paths, idx = [], []
    for k in range(n_stacks):
        paths += [f"J1/imported/stack_{k:02d}.mrcs"] * (bounds[k + 1] - bounds[k])
        idx += list(range(bounds[k + 1] - bounds[k]))
    d["blob/path"] = np.asarray(paths, dtype=object)
    d["blob/idx"] = idx
    d["blob/shape"] = np.tile([box, box], (n, 1))
    d["blob/psize_A"] = psize
    d["blob/sign"] = -1.0

    df1 = rng.uniform(8000, 30000, size=n)
    d["ctf/type"] = np.asarray(["imported"] * n, dtype=object)
    d["ctf/exp_group_id"] = rng.integers(1, 3, size=n)
    d["ctf/accel_kv"] = 300.0
    d["ctf/cs_mm"] = 2.7
    d["ctf/amp_contrast"] = 0.1
    d["ctf/df1_A"] = df1
    d["ctf/df2_A"] = df1 - rng.uniform(0, 1500, size=n)
    d["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, size=n)
    d["ctf/phase_shift_rad"] = rng.uniform(0, 0.5, size=n)
    d["ctf/scale"] = 1.0
    d["ctf/bfactor"] = 0.0
    d["ctf/shift_A"] = rng.normal(0, 0.1, size=(n, 2))
    d["ctf/tilt_A"] = rng.normal(0, 0.1, size=(n, 2))
    d["ctf/trefoil_A"] = rng.normal(0, 0.1, size=(n, 2))
    d["ctf/tetra_A"] = rng.normal(0, 0.1, size=(n, 4))
    d["ctf/anisomag"] = np.tile([1.0, 0.0, 0.0, 1.0], (n, 1))

    mic = rng.integers(0, max(1, n // 5), size=n)
    d["location/micrograph_uid"] = mic.astype(np.uint64) * 7919 + 10**15
    d["location/micrograph_path"] = np.asarray(
        [f"J2/motioncorrected/{m:04d}_mic_patch_aligned_doseweighted.mrc" for m in mic], dtype=object
    )
    d["location/micrograph_shape"] = np.tile([4092, 5760], (n, 1))
    d["location/micrograph_psize_A"] = psize / 2
    d["location/center_x_frac"] = rng.uniform(0.01, 0.99, size=n)
    d["location/center_y_frac"] = rng.uniform(0.01, 0.99, size=n)

    d["alignments2D/class"] = rng.integers(0, args.classes, size=n)
    d["alignments2D/pose"] = rng.uniform(-np.pi, np.pi, size=n)
    d["alignments2D/shift"] = rng.uniform(-3, 3, size=(n, 2))
    d["alignments2D/class_posterior"] = rng.uniform(0.2, 1.0, size=n)
    d["alignments2D/psize_A"] = psize

    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    d["alignments3D/pose"] = axis * rng.uniform(0, np.pi, size=(n, 1))
    d["alignments3D/shift"] = rng.uniform(-3, 3, size=(n, 2))
    d["alignments3D/psize_A"] = psize
    d["alignments3D/class_posterior"] = rng.uniform(0.2, 1.0, size=n)
    d["alignments3D/class"] = rng.integers(0, 2, size=n)
    if args.classes3d:
        set_per_class(d, rng, args.classes3d, psize)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    if args.stacks:
        import mrcfile

        yy, xx = np.mgrid[0:box, 0:box].astype(np.float32) - box / 2
        for k in range(n_stacks):
            lo, hi = bounds[k], bounds[k + 1]
            imgs = np.empty((hi - lo, box, box), dtype=np.float32)
            for i in range(hi - lo):
                cx, cy = rng.uniform(-box / 8, box / 8, size=2)
                blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (box / 8) ** 2))
                imgs[i] = blob + rng.normal(0, 0.5, size=(box, box))
            path = os.path.join(out_dir, f"J1/imported/stack_{k:02d}.mrcs")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with mrcfile.new(path, overwrite=True) as m:
                m.set_data(imgs)
                m.set_image_stack()
                m.voxel_size = psize
    d.save(args.out)
    print(f"wrote {args.out} ({n} particles, {len(d.fields())} fields)")


if __name__ == "__main__":
    main()
