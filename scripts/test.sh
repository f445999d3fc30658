#!/usr/bin/env bash
# The test command of the README and of CI: installs what is missing, then runs every test
# (unit, integration with the real binary, MPI runs under mpirun -n 2 and -n 3, and interop
# with Python starfile / mrcfile / cryosparc-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# OpenMPI refuses to run as root (CI containers) without these.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The interop tests must run here, not be skipped.
export EMCLASS_REQUIRE_INTEROP=1
# The CUDA kernels must compile here (NVRTC from the PyPI package nvidia-cuda-nvrtc-cu12 in
# .venv, installed through scripts/install_deps.sh → setup_venv.sh; no GPU needed), not be
# skipped.
nvrtc_lib=$(ls -d "$PWD"/.venv/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib | head -1)
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EMCLASS_REQUIRE_NVRTC=1
# On a machine with a GPU, EMCLASS_REQUIRE_GPU=1 (set by benches/gpu.sh) turns the GPU
# tests' skips into failures; here they skip, printing why.
cargo test --locked --no-fail-fast "$@"
