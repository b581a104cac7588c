#!/usr/bin/env bash
# The GPU checks of issues 19 and 16, for a GPU machine without a Rust toolchain (the lent
# H100/H200 machines): one bundle built here, one command there.
#
#   scripts/gpu-dist-check.sh bundle   # here (no GPU needed): build `longtail` and the NCCL test
#                                      # with --features nccl (.ci/cuda.sh's toolkit and target
#                                      # dir, dev profile), pack them into .bundle/dist.tar.xz and
#                                      # OpenMPI's Debian packages into .mpi/
#   scripts/gpu-dist-check.sh run      # there: unpack, find the CUDA/NCCL libraries (PyTorch's
#                                      # wheels) and an mpirun (the system's, else the packed
#                                      # OpenMPI under /opt/ompi), then run the checks below
#
# Checks (results and logs in $OUT, default /tmp/gpu-dist; 8 files at most):
#   1. crates/dist/tests/nccl.rs under `mpirun -np 1`: all-reduce, mean, broadcast and the
#      differentiable sum on the GPU, against hand-computed values;
#   2. `longtail train --device cuda` vs `mpirun -np 1 longtail train --distributed nccl
#      --device cuda`, same preset and seed: the weights and metrics must be identical;
#   3. `longtail compare --device cuda --seeds 0` over every default entry of the bundled set,
#      in parallel shards sharing the GPU (GPU_DIST_CMP_S seconds at most, default 300).
# A single GPU allows one NCCL rank (NCCL refuses two ranks on one device); more ranks need
# more GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
log() { printf '== gpu-dist-check: %s\n' "$*"; }

case "$mode" in
bundle)
    target="${LONGTAIL_CUDA_TARGET:-$HOME/.cache/longtail/cuda-target}"
    bash .ci/cuda.sh build --features nccl --bin longtail
    eval "$(bash .ci/cuda.sh env)"
    test_bin="$(CARGO_TARGET_DIR="$target" cargo test -p longtail-dist --features nccl --test nccl \
        --no-run 2>&1 | sed -n 's/.*Executable tests\/nccl.rs (\(.*\))/\1/p' | tail -n1)"
    [ -x "$test_bin" ] || { log "the NCCL test binary was not built"; exit 1; }
    rm -rf .bundle/d
    mkdir -p .bundle/d .mpi
    cp "$target/debug/longtail" .bundle/d/longtail
    cp "$test_bin" .bundle/d/nccl-test
    strip .bundle/d/longtail .bundle/d/nccl-test
    git rev-parse HEAD >.bundle/d/COMMIT
    git diff --quiet || echo "+ uncommitted changes" >>.bundle/d/COMMIT
    tar -C .bundle -cJf .bundle/dist.tar.xz d
    rm -rf .bundle/d
    # OpenMPI 4.1 and the libraries it loads, as Debian packages (unpacked there, not installed).
    (cd .mpi && apt-get download libopenmpi3 openmpi-bin openmpi-common libevent-core-2.1-7 \
        libevent-pthreads-2.1-7 libfabric1 libhwloc15 libibverbs1 ibverbs-providers libmunge2 \
        libnl-3-200 libnl-route-3-200 libnuma1 libpmix2 libpsm-infinipath1 libpsm2-2 librdmacm1 \
        libucx0 libatomic1 2>/dev/null)
    log "bundle: .bundle/dist.tar.xz ($(du -h .bundle/dist.tar.xz | cut -f1)), .mpi ($(du -sh .mpi | cut -f1)); carry both"
    ;;
run)
    OUT="${OUT:-/tmp/gpu-dist}"
    mkdir -p "$OUT"
    work=/tmp/gpu-dist-work
    rm -rf "$work"
    mkdir -p "$work"
    tar -C "$work" -xJf .bundle/dist.tar.xz
    bin="$work/d"
    log "bundle of $(tr '\n' ' ' <"$bin/COMMIT")"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/== GPU: /'
    # CUDA 13 and NCCL from the Python wheels PyTorch uses.
    libs="$(python3 - <<'EOF'
import glob, os, site, sys
seen = []
for r in set(site.getsitepackages() + sys.path):
    for lib in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True):
        d = os.path.dirname(lib)
        if d not in seen:
            seen.append(d)
print(":".join(seen))
EOF
)"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    if command -v mpirun >/dev/null; then
        mpirun=mpirun
    else
        p=/opt/ompi
        rm -rf "$p"
        mkdir -p "$p"
        for f in .mpi/*.deb; do dpkg -x "$f" "$p"; done
        export OPAL_PREFIX="$p/usr" PATH="$p/usr/bin:$PATH"
        export LD_LIBRARY_PATH="$p/usr/lib/x86_64-linux-gnu:$p/usr/lib/x86_64-linux-gnu/openmpi/lib:$p/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
        mpirun="$p/usr/bin/mpirun.openmpi"
        log "OpenMPI unpacked into $p"
    fi
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    if ldd "$bin/longtail" | grep 'not found'; then
        log "libraries missing (above)"
        exit 4
    fi
    status=0
    mpi() { "$mpirun" --oversubscribe --bind-to none -np "$@"; }

    log "1. NCCL collectives on the GPU (mpirun -np 1)"
    mpi 1 "$bin/nccl-test" --nocapture 2>&1 | tee "$OUT/nccl-test.log" || status=1

    log "2. one NCCL rank vs no --distributed, ce.fmnist-lt, 4 epochs, cuda"
    runs="$work/runs"
    t0=$(date +%s.%N)
    "$bin/longtail" train --device cuda --preset ce.fmnist-lt --epochs 4 --out "$runs/plain" \
        --quiet 2>&1 | tee "$OUT/plain.log" || status=1
    t1=$(date +%s.%N)
    mpi 1 "$bin/longtail" train --distributed nccl --device cuda --preset ce.fmnist-lt \
        --epochs 4 --out "$runs/nccl" --quiet 2>&1 | tee "$OUT/nccl.log" || status=1
    t2=$(date +%s.%N)
    log "wall: plain $(awk "BEGIN{print $t1 - $t0}") s, 1 NCCL rank $(awk "BEGIN{print $t2 - $t1}") s"
    # A second plain run: whether candle's CUDA training is itself bit-reproducible.
    "$bin/longtail" train --device cuda --preset ce.fmnist-lt --epochs 4 --out "$runs/plain2" \
        --quiet >>"$OUT/plain.log" 2>&1 || status=1
    for other in plain2 nccl; do
        log "plain vs $other"
        python3 - "$runs/plain" "$runs/$other" <<'EOF' 2>&1 | tee -a "$OUT/equal.log" || status=1
import json, sys
from safetensors.numpy import load_file
a, b = sys.argv[1], sys.argv[2]
wa, wb = load_file(f"{a}/last.safetensors"), load_file(f"{b}/last.safetensors")
assert wa.keys() == wb.keys(), "different tensors"
worst = max(float(abs(wa[k].astype("float64") - wb[k].astype("float64")).max()) for k in wa)
drop = ("seconds", "img_per_s", "images_per_second", "time")
def rows(d):
    return [{k: v for k, v in json.loads(l).items() if not any(t in k for t in drop)}
            for l in open(f"{d}/metrics.jsonl")]
ra, rb = rows(a), rows(b)
print(f"{len(wa)} tensors, max |a - b| = {worst:.3e}; metrics rows equal: {ra == rb}")
for r in ra + rb:
    print("  ", r)
sys.exit(0 if worst == 0.0 and ra == rb else 1)
EOF
    done

    log "3. longtail compare on the GPU, seed 0, parallel shards (${GPU_DIST_CMP_S:-300} s at most)"
    cmp="$work/cmp"
    shards=("ride.fmnist-lt" "sade.fmnist-lt" "tlc.fmnist-lt focal.fmnist-lt" "balpoe.fmnist-lt"
        "cb.fmnist-lt ldam-drw.fmnist-lt" "bsce.fmnist-lt la.fmnist-lt" "wb.fmnist-lt wb.fmnist-lt+wb"
        "ce.fmnist-lt ce.fmnist-lt+crt ce.fmnist-lt+lws ce.fmnist-lt+tau-norm ce.fmnist-lt+la")
    t0=$(date +%s)
    i=0
    for s in "${shards[@]}"; do
        # shellcheck disable=SC2086
        RAYON_NUM_THREADS=2 timeout "${GPU_DIST_CMP_S:-300}" "$bin/longtail" compare --device cuda \
            --seeds 0 --out "$cmp" --quiet $s >"$work/cmp-$i.log" 2>&1 &
        i=$((i + 1))
    done
    wait || true
    log "shards done in $(($(date +%s) - t0)) s"
    tail -n 4 "$work"/cmp-*.log >"$OUT/cmp-shards.log" 2>&1 || true
    RAYON_NUM_THREADS=16 timeout 60 "$bin/longtail" compare --device cuda --seeds 0 --out "$cmp" \
        2>&1 | tee "$OUT/compare.log" || status=1
    cp "$cmp"/compare.csv "$cmp"/compare.json "$OUT/" 2>/dev/null || true
    exit "$status"
    ;;
*)
    echo "usage: scripts/gpu-dist-check.sh [bundle|run]" >&2
    exit 2
    ;;
esac
