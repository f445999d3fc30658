#!/usr/bin/env bash
# Creates the Python virtual environment `.venv` at the repository root that the interop
# tests (tests/interop.rs → scripts/interop/*.py) run under: numpy, mrcfile, starfile,
# pandas and cryosparc-tools at the versions pinned in scripts/interop/requirements.txt
# (top level: numpy 2.4.6, mrcfile 1.5.4, starfile 0.5.13, pandas 3.1.1,
# cryosparc-tools 5.0.3; all install from PyPI wheels on Python 3.11), and NVRTC
# (nvidia-cuda-nvrtc-cu12 12.9.86: libnvrtc.so.12, no GPU needed) for the tests that compile
# every CUDA kernel.
# Idempotent: does nothing when .venv already holds exactly these pins.
# Override the interpreter with PYTHON=/path/to/python3.
set -euo pipefail
cd "$(dirname "$0")/.."

req=scripts/interop/requirements.txt
stamp=.venv/.emclass-requirements

if [ -x .venv/bin/python ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp" \
    && .venv/bin/python -c 'import numpy, mrcfile, starfile, pandas, cryosparc.dataset' 2>/dev/null \
    && ls .venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 >/dev/null 2>&1; then
    exit 0
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for c in python3.11 python3.12 python3.10 python3; do
        if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
    done
fi
if [ -z "$PY" ]; then
    echo "setup_venv.sh: no python3 found; install Python 3.10-3.12 with venv and pip" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$req"
.venv/bin/python -c 'import numpy, mrcfile, starfile, pandas, cryosparc.dataset'
cp "$req" "$stamp"
echo "setup_venv.sh: .venv ready ($(.venv/bin/python --version))"
