#!/usr/bin/env python3
"""Checks that CryoSPARC .cs file B holds the particles of .cs file A (read with cryosparc-tools).

    check_cs.py A.cs B.cs [--ignore FIELD ...] [--exact FIELD ...] [--rtol R] [--atol T]
                [--loose-types]

Both files are loaded with `cryosparc.dataset.Dataset.load`, so B must be a file CryoSPARC
can read. The uids must be the same, in the same order. Every field of A (but the --ignore'd
ones) must be in B (B may have more) with the same element type (--loose-types: the same
kind, integer / float / string) and the same shape; integers and strings must be equal,
floats within --rtol (default 1e-6) relative or --atol (default 0) absolute, or exactly for
the --exact fields. Exit 0 when they agree ("OK: ..."), 1 with "MISMATCH: ..." on the first
difference, 2 on errors.
"""

import argparse

import numpy as np
from cryosparc.dataset import Dataset

from _common import Mismatch, compare_values, run


def kind(dtype):
    return {"i": "int", "u": "int", "b": "int", "f": "float", "O": "str", "S": "str", "U": "str"}.get(
        dtype.kind, dtype.kind
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--ignore", nargs="+", default=[], metavar="FIELD")
    ap.add_argument("--exact", nargs="+", default=[], metavar="FIELD")
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=0.0)
    ap.add_argument("--loose-types", action="store_true")
    args = ap.parse_args()

    a = Dataset.load(args.a)
    b = Dataset.load(args.b)
    if len(a) != len(b):
        raise Mismatch(f"{len(a)} particles in A, {len(b)} in B")
    compare_values("uid", a["uid"], b["uid"], 0, 0, exact=True)
    ignore = set(args.ignore)
    fields = [f for f in a.fields() if f != "uid" and f not in ignore]
    missing = [f for f in fields if f not in b.fields()]
    if missing:
        raise Mismatch(f"fields of A missing from B: {missing}")
    for f in fields:
        av, bv = np.asarray(a[f]), np.asarray(b[f])
        if args.loose_types:
            if kind(av.dtype) != kind(bv.dtype):
                raise Mismatch(f"{f}: type {av.dtype} vs {bv.dtype}")
        elif av.dtype != bv.dtype:
            raise Mismatch(f"{f}: type {av.dtype} vs {bv.dtype}")
        compare_values(f, av, bv, args.rtol, args.atol, exact=f in args.exact)
    return f"{len(a)} particles, uid + {len(fields)} fields agree"


if __name__ == "__main__":
    run(main)
