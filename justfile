# Recipes for longtail. Every recipe also works without `just` as a cargo alias
# (.cargo/config.toml): `cargo train-ride`, `cargo train-ce`, …
# `just --list` shows the one-line comment right above each recipe.

# Train RIDE-3 on the bundled Fashion-MNIST-LT set, then the CE baseline, and compare them.
train-ride *ARGS:
    cargo run --release -- train --method ride --compare-ce {{ARGS}}

# (Needs the run `just train-ride` wrote.) Prints routed vs all-experts accuracy, experts used
# per image and the compute saved.
# RIDE stage 2: learn the router that lets an image skip experts it does not need.
route-ride *ARGS:
    cargo run --release -- route --checkpoint runs/ride.fmnist-lt-seed0 {{ARGS}}

# Trains the 6-expert teacher (preset ride.fmnist-lt.teacher) into OUT/teacher, then the 3-expert
# student (ride.fmnist-lt.distill: RIDE + T²·KL to the teacher's mean logits) into OUT/student.
# Run it again to continue a stopped run; finished runs are only evaluated.
# RIDE distillation on the bundled set: the teacher, then the student.
distill-ride OUT="runs/ride-distill" *ARGS:
    cargo run --release -- train --preset ride.fmnist-lt.distill --train-teacher --teacher {{OUT}}/teacher --out {{OUT}}/student {{ARGS}}

# Then reports its uncertainty (failure AUROC, ECE, AURC) and the early-exit accuracy / compute
# curve, with plots in runs/tlc-fmnist/plots.
# Train TLC (evidential experts, uncertainty fusion) on the bundled set and evaluate uncertainty.
train-tlc *ARGS:
    cargo run --release -- train --method tlc --out runs/tlc-fmnist {{ARGS}}
    cargo run --release -- eval --checkpoint runs/tlc-fmnist --uncertainty --plot-dir runs/tlc-fmnist/plots

# Then evaluates it under the eleven test class distributions: plain averaging vs test-time
# aggregation, table and plot in runs/sade-fmnist/plots.
# Train SADE (three skill-diverse experts) on the bundled set and evaluate under label shift.
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

# Benchmark of data loading and augmentation (images per second).
bench-data:
    cargo bench -p longtail-data

# Benchmark of the CPU kernels layer by layer (GEMM, conv, batch norm, a stand-alone ResNet-32).
bench-kernels:
    cargo bench -p longtail-kernels

# Reports GFLOP/s, the fraction of the measured GEMM peak and peak RSS; extra flags go to
# `longtail bench train`.
# Training speed on this CPU (ResNet-32, RIDE-3): our kernels vs candle's stock ops.
bench-train *ARGS:
    cargo run --release -- bench train {{ARGS}}

# Builds with `cuda`, runs the official parity on the GPU, the training benchmark (ResNet-32,
# RIDE-3, ResNeXt-50) and the PyTorch ratio; `just gpu-check bundle` packs it for a GPU machine
# without Rust (see scripts/gpu-check.sh).
# GPU check on a machine with an NVIDIA GPU.
gpu-check *ARGS:
    bash scripts/gpu-check.sh {{ARGS}}

# Resumable: finished runs are read back, so re-running costs only what is new.
# Train every method's bundled-set preset (and the second stages) over seeds 0, 1, 2: one table.
compare *ARGS:
    cargo run --release -- compare {{ARGS}}
