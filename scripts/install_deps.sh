#!/usr/bin/env bash
# Installs everything emclass needs to build, test and run its demo on a fresh Debian/Ubuntu
# machine: system packages (MPI, HDF5, clang for bindgen), a Rust toolchain if none is on
# PATH, and the Python venv (.venv) used by the interop tests. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# procps: pgrep and kill, used by the tests that kill a run mid-way.
pkgs=(libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools clang libclang-dev pkg-config time python3-venv procps)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "installing system packages: ${missing[*]}"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "installing Rust with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

bash scripts/setup_venv.sh
