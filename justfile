# Recipes for longtail. Every recipe also works without `just` as a cargo alias
# (.cargo/config.toml): `cargo train-ride`, `cargo train-ce`, …

# Train RIDE-3 on the bundled Fashion-MNIST-LT set, then the CE baseline of the same recipe, and compare.
train-ride *ARGS:
    cargo run --release -- train --method ride --compare-ce {{ARGS}}

# RIDE stage 2 on the run `just train-ride` wrote: learn the router that lets an image skip
# experts, then print routed vs all-experts accuracy, experts used per image and compute.
route-ride *ARGS:
    cargo run --release -- route --checkpoint runs/ride.fmnist-lt-seed0 {{ARGS}}

# Train TLC (evidential experts, uncertainty fusion) on the bundled set, then report its
# uncertainty (failure AUROC, ECE, AURC) and the early-exit accuracy / compute curve, with plots.
train-tlc *ARGS:
    cargo run --release -- train --method tlc --out runs/tlc-fmnist {{ARGS}}
    cargo run --release -- eval --checkpoint runs/tlc-fmnist --uncertainty --plot-dir runs/tlc-fmnist/plots

# Train SADE (three skill-diverse experts) on the bundled set, then evaluate it under the eleven
# test class distributions: plain averaging vs test-time aggregation, table and plot.
train-sade *ARGS:
    cargo run --release -- train --preset sade.fmnist-lt --out runs/sade-fmnist {{ARGS}}
    cargo run --release -- eval --checkpoint runs/sade-fmnist --test-dist all --plot-dir runs/sade-fmnist/plots

# Train the CE baseline on the bundled set.
train-ce *ARGS:
    cargo run --release -- train --method ce {{ARGS}}

# Show the bundled data set's long-tail statistics.
data *ARGS:
    cargo run --release -- data {{ARGS}}

# List the presets.
presets:
    cargo run --release -- presets

# The test suite (what CI runs).
test:
    cargo test --workspace

# Benchmarks.
bench-data:
    cargo bench -p longtail-data

bench-kernels:
    cargo bench -p longtail-kernels

# Training speed on this CPU (ResNet-32, RIDE-3): our kernels vs candle's stock ops, GFLOP/s,
# fraction of the measured GEMM peak, peak RSS. Extra flags go to `longtail bench train`.
bench-train *ARGS:
    cargo run --release -- bench train {{ARGS}}

# On a machine with an NVIDIA GPU: build with `cuda`, official parity on the GPU, training
# benchmark (ResNet-32, RIDE-3, ResNeXt-50) and the PyTorch ratio. `just gpu-check bundle`
# packs it for a GPU machine without Rust; see scripts/gpu-check.sh.
gpu-check *ARGS:
    bash scripts/gpu-check.sh {{ARGS}}
