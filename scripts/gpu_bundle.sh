#!/usr/bin/env bash
# Packs what benches/gpu.sh needs on a GPU machine that has no Rust toolchain and maybe
# other system libraries: the stripped release binary, the stripped library test binary
# (the unit tests, GPU parity tests included) and the shared libraries they load apart from
# the C library itself (HDF5, OpenMPI and their dependencies, from `ldd`), into gpu-bundle/
# (ignored by git; about 35 MB). Then, for the device tool: carry ["gpu-bundle"] and run
#   bash benches/gpu.sh
# NVRTC, cuBLAS and the driver come from the GPU machine's CUDA installation.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
testbin=$(cargo test --release --locked --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
rm -rf gpu-bundle
mkdir -p gpu-bundle/lib
strip -o gpu-bundle/emclass target/release/emclass
strip -o gpu-bundle/emclass-tests "$testbin"
for b in gpu-bundle/emclass gpu-bundle/emclass-tests; do
    ldd "$b" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libgcc_s)\.so' \
    | while read -r lib; do cp -L "$lib" gpu-bundle/lib/; done
du -sh gpu-bundle
