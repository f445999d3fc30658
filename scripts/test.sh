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
cargo test --locked --no-fail-fast "$@"
