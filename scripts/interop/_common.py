"""Helpers shared by the interop scripts (scripts/interop/*.py).

Every check script exits 0 when the files agree, 1 with a one-line "MISMATCH: ..." on the
first difference, and 2 with "ERROR: ..." when it cannot run (missing file, bad arguments).
"""

import sys

import numpy as np


class Mismatch(Exception):
    """The two files differ; the message says where."""


def run(main):
    """Runs main() and turns its outcome into the exit codes above."""
    try:
        msg = main()
    except Mismatch as e:
        print(f"MISMATCH: {e}", flush=True)
        sys.exit(1)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - report anything else as a usage/IO error
        print(f"ERROR: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    if msg:
        print(f"OK: {msg}", flush=True)
    sys.exit(0)


def compare_values(what, a, b, rtol, atol, exact=False):
    """Compares two equal-length 1-D (or row-by-width 2-D) arrays of one column.

    Integers, booleans and strings must be equal; floats equal within rtol/atol (NaN equals
    NaN) unless exact. Raises Mismatch naming `what` and the first differing row.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise Mismatch(f"{what}: shape {a.shape} vs {b.shape}")
    if a.size == 0:
        return
    a_num = a.dtype.kind in "iufb"
    b_num = b.dtype.kind in "iufb"
    if a_num != b_num:
        raise Mismatch(f"{what}: type {a.dtype} vs {b.dtype}")
    if not a_num:
        ok = np.asarray([x == y for x, y in zip(a.ravel().tolist(), b.ravel().tolist())]).reshape(a.shape)
    elif exact or (a.dtype.kind in "iub" and b.dtype.kind in "iub"):
        ok = (a == b) | (np.isnan(a.astype(float)) & np.isnan(b.astype(float)))
    else:
        ok = np.isclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    if not np.all(ok):
        bad = np.argwhere(~ok)[0]
        row = int(bad[0])
        idx = tuple(int(i) for i in bad)
        av, bv = (x.item() if hasattr(x, "item") else x for x in (a[idx], b[idx]))
        raise Mismatch(f"{what}: row {row}: A={av!r} B={bv!r} ({int(np.sum(~ok))} values differ)")
