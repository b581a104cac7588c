#!/usr/bin/env python3
"""The PyTorch side of `just gpu-check` (issue #9): the same training step as
`examples/gpu_check.rs` in PyTorch, for the candle/PyTorch throughput ratio.

Reads the JSON lines the Rust benchmark wrote (`--json`), rebuilds each network from the
fields it recorded (arch, blocks, planes, shared stages, experts, classes, cosine classifier),
and times one training step: train-mode forward, the method's loss (softmax CE for `ce`;
for `ride`, LDAM-margin CE per expert plus the KL diversity term, as RIDE), backward,
SGD (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4) and `loss.item()` (the one host read
the Rust trainer does per step). Same batch, image size and timing rule (2 warm-up steps, median
of the timed steps, synchronised). TF32 is set as the Rust run had it (off by default) for
both matmul and cuDNN, so both sides compute in full f32.

    python3 scripts/gpu_bench_torch.py candle.jsonl [--out torch.jsonl]

Exits 0 with a message when PyTorch or a CUDA device is missing (the ratio is then skipped).
"""

import argparse
import json
import math
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candle_jsonl")
    ap.add_argument("--out")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_bench_torch: PyTorch is not installed here; no ratio")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench_torch: PyTorch sees no CUDA device; no ratio")
        return 0
    # The networks and losses live beside this script (copied with it into the GPU bundle).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_models import MultiExpert, make_loss

    dev = torch.device(args.device)
    cases = [json.loads(l) for l in open(args.candle_jsonl) if l.strip()]
    if not cases:
        print("gpu_bench_torch: no candle results to compare with")
        return 1

    torch.backends.cuda.matmul.allow_tf32 = bool(cases[0].get("tf32", False))
    torch.backends.cudnn.allow_tf32 = bool(cases[0].get("tf32", False))
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev}, "
          f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    print(f"  {'model':<10} {'batch':>6} {'size':>5} {'torch ms':>10} {'torch img/s':>12} {'candle img/s':>13} {'candle/torch':>13}")
    out = open(args.out, "a") if args.out else None
    for c in cases:
        torch.manual_seed(1)
        model = MultiExpert(c).to(dev).train()
        loss_fn = make_loss(c, dev)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        x = torch.randn(c["batch"], 3, c["size"], c["size"], device=dev)
        y = torch.tensor([(i * 7919) % c["classes"] for i in range(c["batch"])], device=dev)
        times = []
        for step in range(c["steps"] + 2):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            v = loss.item()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if not math.isfinite(v):
                print(f"  {c['model']}: non-finite loss {v}")
                return 1
            if step >= 2:
                times.append(time.perf_counter() - t0)
        times.sort()
        med = times[len(times) // 2]
        ips = c["batch"] / med
        ratio = c["img_per_s"] / ips
        print(f"  {c['model']:<10} {c['batch']:>6} {c['size']:>5} {med * 1e3:>10.2f} {ips:>12.1f} {c['img_per_s']:>13.1f} {ratio:>13.3f}")
        if out:
            out.write(json.dumps({**c, "framework": "torch", "torch": torch.__version__, "step_ms": med * 1e3,
                                  "img_per_s": ips, "candle_img_per_s": c["img_per_s"], "candle_over_torch": ratio}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
