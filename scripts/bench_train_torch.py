#!/usr/bin/env python3
"""The PyTorch side of `longtail bench train --torch PYTHON` (issue #17): one CPU training step
of the same network, loss and optimiser as the Rust benchmark, for the ours / PyTorch ratio.

`longtail bench train` runs this once per model and round, interleaved with its own
measurement, and passes the model as one JSON object (`--case`, the fields of
`torch_models.MultiExpert`). Timed like the Rust side (`crates/train/src/bench.rs`): one warm-up
step, then the median of `--steps` steps of train-mode forward, loss, backward, SGD (lr 0.1,
momentum 0.9, Nesterov, weight decay 5e-4) and `loss.item()`; then the median of `--eval-reps`
eval-mode forwards under `torch.no_grad()`. Peak RSS is VmHWM after resetting it once the model
and inputs exist (as the Rust side does), so the interpreter's own memory is not counted.

Prints one JSON line: train/eval images per second, step and forward seconds, peak RSS, the
losses, the torch version, ATen's CPU capability (`AVX512`, `AVX2`, …) and ONEDNN_MAX_CPU_ISA.

    python3 scripts/bench_train_torch.py --case '{"arch": "ResNet32", ...}' --threads 2
"""

import argparse
import json
import os
import sys
import time


def peak_rss_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", required=True, help="the model as JSON (see torch_models.py)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--eval-reps", type=int, default=5)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print(json.dumps({"error": "PyTorch is not installed for " + sys.executable}))
        return 3
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_models import MultiExpert, make_loss

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    c = json.loads(args.case)
    dev = torch.device("cpu")
    torch.manual_seed(1)
    model = MultiExpert(c).to(dev).train()
    loss_fn = make_loss(c, dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    b, size = c["batch"], c["size"]
    x = torch.rand(b, 3, size, size) * 2 - 1
    y = torch.tensor([(i * 37) % c["classes"] for i in range(b)])
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    steps, forwards, losses = [], [], []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        t_fwd = time.perf_counter() - t0
        loss.backward()
        opt.step()
        v = loss.item()
        t = time.perf_counter() - t0
        losses.append(v)
        if step > 0:
            steps.append(t)
            forwards.append(t_fwd)
    rss = peak_rss_mib()
    model.eval()
    evals = []
    with torch.no_grad():
        for _ in range(max(1, args.eval_reps)):
            t0 = time.perf_counter()
            model(x).sum().item()
            evals.append(time.perf_counter() - t0)

    def median(v):
        return sorted(v)[len(v) // 2]

    step_s = median(steps)
    print(json.dumps({
        "torch": torch.__version__,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset (its best)"),
        "threads": torch.get_num_threads(),
        "step_s": step_s,
        "forward_s": median(forwards),
        "train_img_s": b / step_s,
        "eval_img_s": b / median(evals),
        "train_peak_mib": rss,
        "losses": losses,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
