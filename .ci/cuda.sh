#!/usr/bin/env bash
# CI step: compile the `cuda` feature on a machine without a GPU (issue #9).
#
# candle's CUDA kernels (candle-kernels, through cudaforge) need `nvcc` and the CUDA headers at
# build time, and cudarc (candle's CUDA binding) is built with `dynamic-linking`, so the final
# link needs libcuda/libcublas/libcublasLt/libcurand/libnvrtc/libcudart. All of it comes from
# pinned PyPI wheels (CUDA 13.0: the version of the lent GPU machines' driver and PyTorch),
# installed into a venv under $HOME; nothing is downloaded from anywhere else.
#
# The driver library libcuda.so.1 ships with the NVIDIA driver, never in a wheel, and cuBLAS's
# wheel is ~0.5 GB, so the link uses *stub* libraries instead: one empty function for every
# symbol cudarc's bindings declare, with the real SONAME (libnccl.so.2 too, for `--features nccl`;
# PyTorch's nvidia-nccl-cu13 wheel has the real one). That is exactly what the CUDA
# toolkit's own lib64/stubs/libcuda.so is; at run time the real libraries are found instead
# (the driver's libcuda.so.1 and, e.g., PyTorch's nvidia/cu13/lib).
#
#   bash .ci/cuda.sh            # install (once) and `cargo build --features cuda`
#   bash .ci/cuda.sh build --features nccl  # what CI runs: CUDA + NCCL + MPI (needs libopenmpi-dev)
#   bash .ci/cuda.sh env        # install (once) and print the `export` lines, for `eval`
#   bash .ci/cuda.sh build ARGS # install (once) and `cargo build --features cuda ARGS`
#   bash .ci/cuda.sh cudnn-stub # also a cuDNN link stub, for `--features cudnn` builds
#
# Env: LONGTAIL_CUDA_VENV (default $HOME/.cache/longtail/cuda-13.0), CUDA_COMPUTE_CAP
# (default 90: H100/H200; candle-kernels would otherwise ask nvidia-smi).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned wheels: the compiler (nvcc, its crt headers and cicc/libnvvm), the runtime (headers,
# libcudart) and CCCL (cuda/std/*, included by candle's kernels).
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
CUDARC_VERSION=0.19.10 # the cudarc that Cargo.lock resolves for candle-core 0.11.1

VENV="${LONGTAIL_CUDA_VENV:-$HOME/.cache/longtail/cuda-13.0}"
STAMP="$VENV/.longtail-installed"
want="${WHEELS[*]} cudarc-$CUDARC_VERSION stubs-v2"

install() {
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return
    fi
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "${WHEELS[@]}"
    local root
    root="$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
    # nvcc.profile looks for headers under $(TOP)/targets/<arch>/include: alias the flat wheel tree.
    mkdir -p "$root/targets"
    ln -sfn .. "$root/targets/x86_64-linux"
    # Link stubs (see the header): every symbol cudarc's bindings can reference, real SONAMEs.
    cargo fetch --quiet
    local src
    src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "cudarc-$CUDARC_VERSION" | head -n1)"
    if [ -z "$src" ]; then
        echo "cuda.sh: cudarc-$CUDARC_VERSION sources not found after cargo fetch" >&2
        exit 1
    fi
    local stubs="$root/lib/stubs" lib soname module
    mkdir -p "$stubs"
    for spec in cuda:libcuda.so.1:driver cublas:libcublas.so.13:cublas cublasLt:libcublasLt.so.13:cublaslt \
        curand:libcurand.so.10:curand nvrtc:libnvrtc.so.13:nvrtc nccl:libnccl.so.2:nccl; do
        IFS=: read -r lib soname module <<<"$spec"
        grep -ohE '^pub unsafe fn [A-Za-z0-9_]+\(' "$src/src/$module/sys/mod.rs" |
            sed -E 's/^pub unsafe fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u >"$stubs/$lib.c"
        test -s "$stubs/$lib.c"
        cc -shared -fPIC -o "$stubs/lib$lib.so" -Wl,-soname,"$soname" "$stubs/$lib.c"
    done
    # libcudart is real (from the runtime wheel); the linker wants the unversioned name.
    ln -sfn ../libcudart.so.13 "$stubs/libcudart.so"
    echo "$want" >"$STAMP"
}

exports() {
    local root
    root="$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
    cat <<EOT
export CUDA_ROOT="$root"
export CUDA_HOME="$root"
export CUDA_PATH="$root"
export NVCC="$root/bin/nvcc"
export PATH="$root/bin:\$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
EOT
}

# A link stub for cuDNN 9 (only for `--features cudnn` builds, e.g. GPU_CHECK_FEATURES=cudnn in
# scripts/gpu-check.sh; CI does not build cudnn): the same recipe as the stubs above.
cudnn_stub() {
    local root src stubs
    root="$("$VENV/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
    stubs="$root/lib/stubs"
    [ -f "$stubs/libcudnn.so" ] && return
    src="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name "cudarc-$CUDARC_VERSION" | head -n1)"
    grep -ohE '^pub unsafe fn [A-Za-z0-9_]+\(' "$src/src/cudnn/sys/mod.rs" |
        sed -E 's/^pub unsafe fn ([A-Za-z0-9_]+)\(/void \1(void) {}/' | sort -u >"$stubs/cudnn.c"
    test -s "$stubs/cudnn.c"
    cc -shared -fPIC -o "$stubs/libcudnn.so" -Wl,-soname,libcudnn.so.9 "$stubs/cudnn.c"
}

install
case "${1:-build}" in
env)
    exports
    ;;
cudnn-stub)
    cudnn_stub
    ;;
build)
    shift || true
    eval "$(exports)"
    nvcc --version | tail -n2
    start=$(date +%s)
    # A target dir of its own, outside the clone: the CUDA build does not evict the CPU build's
    # artefacts (features differ), and candle's CUDA kernels (the slow part, ~20 min cold on
    # 2 cores) stay compiled between CI runs on the same machine.
    CARGO_TARGET_DIR="${LONGTAIL_CUDA_TARGET:-$HOME/.cache/longtail/cuda-target}" \
        cargo build --features cuda "$@"
    echo "cuda.sh: cargo build --features cuda $* took $(($(date +%s) - start)) s"
    ;;
*)
    echo "usage: .ci/cuda.sh [env|build [cargo args]|cudnn-stub]" >&2
    exit 2
    ;;
esac
