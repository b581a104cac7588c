#!/usr/bin/env bash
# `just gpu-check` (issue #9): validate the CUDA build on a machine with an NVIDIA GPU, in one
# command that finishes in well under 8 minutes once built:
#   1. build `examples/gpu_check.rs` with `--features cuda` (release);
#   2. official-fixture parity on the GPU: the four CIFAR models' logits (≤ 1e-3, TF32 off) and
#      the RIDE / SADE / TLC losses and gradients at epochs 1 and 170;
#   3. training throughput on the GPU: ResNet-32 CE and RIDE-3 (32², batch 128) and RIDE-3 on
#      ResNeXt-50 (224², batch 64), img/s per training step;
#   4. where PyTorch is installed, the same step in PyTorch (scripts/gpu_bench_torch.py) and
#      the candle/PyTorch ratio.
# Without a GPU it says so and stops (exit 0; `--require-gpu` makes that exit 3).
#
#   scripts/gpu-check.sh                 # build here and run here (needs cargo, a GPU and nvcc
#                                        # or the PyPI toolkit of .ci/cuda.sh)
#   scripts/gpu-check.sh bundle [DIR]    # no GPU needed: build and pack binaries + fixtures into
#                                        # DIR (default target/gpu-bundle) and DIR.tar.xz, for a
#                                        # GPU machine that has no Rust toolchain
#   scripts/gpu-check.sh run-bundle [DIR]  # on the GPU machine: run a packed bundle, then
#                                        # `longtail train --method ride --compare-ce` on cuda
#
# Env: OUT (results directory; default target/gpu-check), CUDA_COMPUTE_CAP (default: from
# nvidia-smi, else 90), GPU_CHECK_ARGS (extra flags for gpu_check, e.g. "--tf32"),
# GPU_CHECK_PROFILE (release, the default, or dev: reuse .ci/cuda.sh's warm target dir),
# GPU_CHECK_FEATURES (cuda, the default, or cudnn: candle's cuDNN convolutions).
# The bundle's binary links libcuda.so.1 (the driver) and the CUDA 13 libcudart/cublas/cublasLt/
# curand/nvrtc dynamically; run-bundle finds them under /usr/local/cuda* or in Python's
# nvidia/cu13 wheels (PyTorch's), and says which one is missing otherwise.
set -euo pipefail
caller="$(pwd)"
cd "$(dirname "$0")/.."
repo="$(pwd)"
mode="${1:-all}"
shift || true
OUT="${OUT:-$repo/target/gpu-check}"
mkdir -p "$OUT"
log() { printf '== gpu-check: %s\n' "$*"; }

has_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}

require_gpu_or_stop() {
    if ! has_gpu; then
        log "no NVIDIA GPU here (nvidia-smi is missing or lists no GPU): nothing to check on a GPU."
        log "the cuda feature still compiles without one: bash .ci/cuda.sh (what CI runs)."
        if [ "${REQUIRE_GPU:-0}" = 1 ]; then exit 3; fi
        exit 0
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader |
        sed 's/^/== gpu-check: GPU: /'
}

compute_cap() {
    if [ -n "${CUDA_COMPUTE_CAP:-}" ]; then
        echo "$CUDA_COMPUTE_CAP"
    elif has_gpu; then
        nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d '.'
    else
        echo 90
    fi
}

# Builds the gpu_check example with CUDA; prints the binary's path.
build() {
    export CUDA_COMPUTE_CAP
    CUDA_COMPUTE_CAP="$(compute_cap)"
    if ! command -v nvcc >/dev/null 2>&1; then
        eval "$(bash .ci/cuda.sh env)"
    fi
    log "building with $(nvcc --version | grep -o 'release [0-9.]*'), compute capability $CUDA_COMPUTE_CAP" >&2
    local features=cuda
    if [ "${GPU_CHECK_FEATURES:-cuda}" = cudnn ]; then
        features=cudnn
        bash .ci/cuda.sh cudnn-stub >&2
    fi
    if [ "${GPU_CHECK_PROFILE:-release}" = dev ]; then
        # The dev profile (dependencies at opt-level 3) in .ci/cuda.sh's target dir, where CI keeps
        # candle's CUDA kernels compiled: minutes instead of a cold ~25-minute release build.
        bash .ci/cuda.sh build --features "$features" --example gpu_check --bin longtail >&2
        echo "${LONGTAIL_CUDA_TARGET:-$HOME/.cache/longtail/cuda-target}/debug/examples/gpu_check"
        return
    fi
    cargo build --release --features "$features" --example gpu_check --bin longtail >&2
    echo "$repo/target/release/examples/gpu_check"
}

# The official parity fixtures, kept in the repository (fixtures/README.md).
fixtures_dir() {
    local d="$repo/fixtures/official"
    if [ -d "$d" ]; then
        echo "$d"
        return
    fi
    log "$d is missing: the repository's fixtures/official folder is required" >&2
    exit 1
}

# Finds directories holding the CUDA 13 runtime libraries the binary links, for LD_LIBRARY_PATH.
cuda_lib_path() {
    local dirs=() d
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64; do
        [ -e "$d/libcublas.so.13" ] && dirs+=("$d")
    done
    if command -v python3 >/dev/null 2>&1; then
        while IFS= read -r d; do dirs+=("$d"); done < <(python3 - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
seen = set()
for r in roots:
    for lib in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so.*"), recursive=True):
        d = os.path.dirname(lib)
        if d not in seen:
            seen.add(d)
            print(d)
EOF
)
    fi
    local IFS=:
    echo "${dirs[*]}"
}

run_checks() {
    local bin="$1" fixtures="$2"
    local extra=()
    read -r -a extra <<<"${GPU_CHECK_ARGS:-}"
    rm -f "$OUT/candle.jsonl" "$OUT/torch.jsonl"
    local status=0 t0
    t0=$(date +%s)
    log "parity and benchmark on cuda:0"
    "$bin" --device cuda --fixtures "$fixtures" --json "$OUT/candle.jsonl" "${extra[@]}" 2>&1 |
        tee "$OUT/gpu_check.log" || status=$?
    if [ -s "$OUT/candle.jsonl" ] && command -v python3 >/dev/null 2>&1; then
        log "the same step in PyTorch (if installed)"
        python3 "$repo/scripts/gpu_bench_torch.py" "$OUT/candle.jsonl" --out "$OUT/torch.jsonl" 2>&1 |
            tee "$OUT/torch.log" || log "PyTorch comparison failed (see $OUT/torch.log)"
    fi
    log "done in $(($(date +%s) - t0)) s; results in $OUT"
    return "$status"
}

# `just train-ride` on the GPU: RIDE and the CE baseline on the bundled data, then the eval
# of the RIDE run and its stage-2 router (`longtail route`), timed (the run directory stays in $GPU_CHECK_RUNS, default /tmp).
train_end_to_end() {
    local cli="$1" runs="${GPU_CHECK_RUNS:-/tmp}/gpu-check-runs" t0
    rm -rf "$runs"
    t0=$(date +%s)
    log "end to end: longtail train --method ride --compare-ce --device cuda"
    timeout "${GPU_CHECK_TRAIN_S:-300}" "$cli" train --method ride --compare-ce --device cuda \
        --out "$runs/ride" --quiet 2>&1 | tee "$OUT/train.log" || log "training failed or timed out"
    log "training took $(($(date +%s) - t0)) s"
    t0=$(date +%s)
    timeout 120 "$cli" eval --checkpoint "$runs/ride" --device cuda --uncertainty 2>&1 |
        tee -a "$OUT/train.log" || log "eval failed or timed out"
    log "eval took $(($(date +%s) - t0)) s"
    t0=$(date +%s)
    timeout 120 "$cli" route --checkpoint "$runs/ride" --device cuda 2>&1 |
        tee -a "$OUT/train.log" || log "route failed or timed out"
    log "route (RIDE stage 2) took $(($(date +%s) - t0)) s"
    cp "$runs/ride/metrics.jsonl" "$OUT/ride-metrics.jsonl" 2>/dev/null || true
}

case "$mode" in
all | --require-gpu)
    [ "$mode" = --require-gpu ] && REQUIRE_GPU=1
    require_gpu_or_stop
    bin="$(build)"
    run_checks "$bin" "$(fixtures_dir)"
    ;;
bundle)
    dir="${1:-$repo/target/gpu-bundle}"
    [[ "$dir" = /* ]] || dir="$caller/$dir"
    bin="$(build)"
    rm -rf "$dir"
    mkdir -p "$dir/fixtures" "$dir/scripts"
    cp "$bin" "$dir/gpu_check"
    # The CLI built beside it (same profile and features), for an end-to-end training run.
    cp "$(dirname "$(dirname "$bin")")/longtail" "$dir/longtail"
    strip "$dir/gpu_check" "$dir/longtail" 2>/dev/null || true
    src="$(fixtures_dir)"
    for f in ride_cifar_e3_c10 ride_baseline_cifar_e1_c10 sade_cifar_e3_c10 tlc_cifar_e3_c10; do
        cp "$src/$f.safetensors" "$src/$f.io.safetensors" "$dir/fixtures/"
    done
    cp "$src"/{ride,sade,tlc}_loss_c10.safetensors "$dir/fixtures/"
    cp scripts/gpu-check.sh scripts/gpu_bench_torch.py scripts/torch_models.py "$dir/scripts/"
    git rev-parse HEAD >"$dir/COMMIT" 2>/dev/null || true
    # candle's PTX makes each binary ~50 MB of mostly text: xz packs the bundle to a fraction.
    tar -C "$(dirname "$dir")" -cJf "$dir.tar.xz" "$(basename "$dir")"
    log "bundle in $dir ($(du -sh "$dir" | cut -f1)) and $dir.tar.xz ($(du -sh "$dir.tar.xz" | cut -f1))"
    log "on the GPU machine: tar xJf $(basename "$dir").tar.xz && bash $(basename "$dir")/scripts/gpu-check.sh run-bundle $(basename "$dir")"
    ;;
run-bundle)
    dir="$(cd "$caller" && cd "${1:-$repo/target/gpu-bundle}" && pwd)"
    repo="$(cd "$dir/.." && pwd)"
    require_gpu_or_stop
    libs="$(cuda_lib_path)"
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if missing="$(ldd "$dir/gpu_check" | grep 'not found')"; then
        log "the bundle's binary cannot find these libraries:"
        echo "$missing"
        log "install the CUDA 13 runtime libraries (e.g. pip wheels nvidia-cublas nvidia-cuda-runtime nvidia-curand nvidia-cuda-nvrtc) or set LD_LIBRARY_PATH"
        exit 4
    fi
    # gpu_bench_torch.py is looked up beside the bundle's scripts.
    repo="$dir"
    status=0
    run_checks "$dir/gpu_check" "$dir/fixtures" || status=$?
    if [ -x "$dir/longtail" ]; then
        train_end_to_end "$dir/longtail"
    fi
    exit "$status"
    ;;
*)
    echo "usage: scripts/gpu-check.sh [all|--require-gpu|bundle [DIR]|run-bundle [DIR]]" >&2
    exit 2
    ;;
esac
