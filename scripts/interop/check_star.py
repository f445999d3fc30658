#!/usr/bin/env python3
"""Checks that a STAR file B holds the same particles as STAR file A (read with `starfile`).

    check_star.py A.star B.star [--ignore COL ...] [--exact COL ...] [--rtol R] [--atol T]
                  [--angle-tol DEG] [--image-names-relative-to DIR [DIR_B]] [--key COL]

Compared: the particle block (`particles`, or the only block of a pre-3.1 file) and, when A
has one, the `optics` block. Every column of A (but the --ignore'd ones) must be in B; B may
have more. Rows must be in the same order (or, with --key COL, are matched by that column,
which must be unique). Values:
  - integers and strings exactly; integer columns of A must be integers in B;
  - floats within --rtol (default 1e-5) relative or --atol (default 1e-6) absolute; exactly
    for the --exact columns;
  - rlnAngleRot/Tilt/Psi, when A has all three, as rotations: the RELION (ZYZ) rotation
    matrices must agree to sin(--angle-tol) (default 0.01°), so equivalent Euler triples
    (e.g. psi 180 vs -180, or tilt 0 with rot/psi traded) match; rlnAnglePsi alone is
    compared modulo 360. --exact on an angle column turns this off for it;
  - rlnImageName "index@path": the index as an integer (000001 = 1), the path as a string,
    or, with --image-names-relative-to, as a resolved file path: relative paths of A and of
    B are taken relative to DIR (or to DIR and DIR_B); the word @star stands for the
    folder of that STAR file.
Exit 0 when they agree ("OK: ..."), 1 with "MISMATCH: ..." on the first difference, 2 on
errors.
"""

import argparse
import os

import numpy as np
import pandas as pd
import starfile

from _common import Mismatch, compare_values, run

ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def blocks(path):
    data = starfile.read(path, always_dict=True)
    if "particles" in data:
        parts = data["particles"]
    elif len(data) == 1:
        parts = next(iter(data.values()))
    else:
        raise ValueError(f"{path}: no data_particles block among {list(data)}")
    if not isinstance(parts, pd.DataFrame):
        raise ValueError(f"{path}: the particle block is not a loop")
    return parts.reset_index(drop=True), data.get("optics")


def euler_to_matrix(rot, tilt, psi):
    """RELION's Euler_angles2matrix (ZYZ, degrees), vectorised: one 3x3 matrix per row."""
    a, b, g = (np.radians(np.asarray(x, dtype=np.float64)) for x in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty((len(a), 3, 3))
    m[:, 0, 0] = cg * cc - sg * sa
    m[:, 0, 1] = cg * cs + sg * ca
    m[:, 0, 2] = -cg * sb
    m[:, 1, 0] = -sg * cc - cg * sa
    m[:, 1, 1] = -sg * cs + cg * ca
    m[:, 1, 2] = sg * sb
    m[:, 2, 0] = sc
    m[:, 2, 1] = ss
    m[:, 2, 2] = cb
    return m


def split_image_names(values, root, what):
    idx, paths = [], []
    for row, v in enumerate(values):
        if not isinstance(v, str) or "@" not in v:
            raise Mismatch(f"{what}: row {row}: {v!r} is not index@path")
        i, p = v.split("@", 1)
        try:
            idx.append(int(i))
        except ValueError:
            raise Mismatch(f"{what}: row {row}: index {i!r} is not an integer") from None
        if root is not None:
            p = os.path.realpath(p if os.path.isabs(p) else os.path.join(root, p))
        paths.append(p)
    return np.asarray(idx), np.asarray(paths, dtype=object)


def compare_tables(name, a, b, args, roots):
    ignore = set(args.ignore)
    exact = set(args.exact)
    if len(a) != len(b):
        raise Mismatch(f"{name}: {len(a)} rows in A, {len(b)} in B")
    missing = [c for c in a.columns if c not in ignore and c not in b.columns]
    if missing:
        raise Mismatch(f"{name}: columns of A missing from B: {missing}")
    if args.key and name == "particles":
        for t, label in ((a, "A"), (b, "B")):
            if args.key not in t.columns or not t[args.key].is_unique:
                raise Mismatch(f"{name}: --key {args.key} is missing from {label} or not unique there")
        order = pd.Index(b[args.key]).get_indexer(a[args.key])
        if (order < 0).any():
            row = int(np.argmax(order < 0))
            raise Mismatch(f"{name}: {args.key} {a[args.key].iloc[row]!r} (row {row} of A) is not in B")
        b = b.iloc[order].reset_index(drop=True)
    checked = 0
    as_rotation = name == "particles" and all(c in a.columns and c not in exact for c in ANGLES)
    for col in a.columns:
        if col in ignore:
            continue
        what = f"{name}: {col}"
        av, bv = a[col].to_numpy(), b[col].to_numpy()
        if col == "rlnImageName":
            ai, ap = split_image_names(av, roots[0], what + " (A)")
            bi, bp = split_image_names(bv, roots[1], what + " (B)")
            compare_values(what + " index", ai, bi, 0, 0)
            compare_values(what + " path", ap, bp, 0, 0)
        elif as_rotation and col in ANGLES:
            continue  # compared together below
        elif col == "rlnAnglePsi" and col not in exact:
            d = (np.asarray(av, float) - np.asarray(bv, float) + 180.0) % 360.0 - 180.0
            compare_values(what + " (difference modulo 360)", d, np.zeros_like(d), 0, args.angle_tol)
        else:
            if av.dtype.kind in "iu" and bv.dtype.kind not in "iu":
                raise Mismatch(f"{what}: integers in A ({av[:1]}) but {bv.dtype} in B ({bv[:1]})")
            compare_values(what, av, bv, args.rtol, args.atol, exact=col in exact)
        checked += 1
    if as_rotation:
        ma = euler_to_matrix(*(a[c] for c in ANGLES))
        mb = euler_to_matrix(*(b[c] for c in ANGLES))
        err = np.abs(ma - mb).reshape(len(a), 9).max(axis=1) if len(a) else np.zeros(0)
        tol = np.sin(np.radians(args.angle_tol)) * 2
        if (err > tol).any():
            row = int(np.argmax(err > tol))
            ea = tuple(float(a[c].iloc[row]) for c in ANGLES)
            eb = tuple(float(b[c].iloc[row]) for c in ANGLES)
            raise Mismatch(f"{name}: rlnAngleRot/Tilt/Psi: row {row}: A={ea} B={eb} are different rotations")
        checked += 3
    return checked


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore", nargs="+", default=[], metavar="COL")
    ap.add_argument("--exact", nargs="+", default=[], metavar="COL")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=1e-6)
    ap.add_argument("--angle-tol", type=float, default=0.01, help="degrees (default 0.01)")
    ap.add_argument("--image-names-relative-to", nargs="+", metavar="DIR")
    ap.add_argument("--key", metavar="COL", help="match particle rows by this unique column")
    args = ap.parse_args()
    roots = (None, None)
    if args.image_names_relative_to:
        dirs = args.image_names_relative_to
        if len(dirs) > 2:
            ap.error("--image-names-relative-to takes one or two folders")
        dirs = dirs * 2 if len(dirs) == 1 else dirs
        roots = tuple(
            os.path.dirname(os.path.abspath(star)) if d == "@star" else d for d, star in zip(dirs, (args.a, args.b))
        )

    pa, oa = blocks(args.a)
    pb, ob = blocks(args.b)
    n = compare_tables("particles", pa, pb, args, roots)
    msg = f"{len(pa)} particles, {n} columns agree"
    if oa is not None:
        if ob is None:
            raise Mismatch("optics: A has a data_optics block, B has none")
        m = compare_tables("optics", oa.reset_index(drop=True), ob.reset_index(drop=True), args, roots)
        msg += f"; {len(oa)} optics groups, {m} columns agree"
    return msg


if __name__ == "__main__":
    run(main)
