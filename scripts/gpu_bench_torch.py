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
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError:
        print("gpu_bench_torch: PyTorch is not installed here; no ratio")
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_bench_torch: PyTorch sees no CUDA device; no ratio")
        return 0
    dev = torch.device(args.device)
    cases = [json.loads(l) for l in open(args.candle_jsonl) if l.strip()]
    if not cases:
        print("gpu_bench_torch: no candle results to compare with")
        return 1

    class NormedLinear(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(i, o).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

        def forward(self, x):
            return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(planes)
            self.c2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(planes)
            self.pad = None
            if stride != 1 or cin != planes:  # option A: subsample + zero-pad channels
                p = (planes - cin) // 2
                self.pad = (stride, p)

        def forward(self, x):
            out = F.relu(self.b1(self.c1(x)))
            out = self.b2(self.c2(out))
            sc = x
            if self.pad is not None:
                s, p = self.pad
                sc = F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, p, p))
            return F.relu(out + sc)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride, groups, base_width):
            super().__init__()
            width = int(planes * (base_width / 64.0)) * groups
            self.c1 = nn.Conv2d(cin, width, 1, bias=False)
            self.b1 = nn.BatchNorm2d(width)
            self.c2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
            self.b2 = nn.BatchNorm2d(width)
            self.c3 = nn.Conv2d(width, planes * 4, 1, bias=False)
            self.b3 = nn.BatchNorm2d(planes * 4)
            self.down = None
            if stride != 1 or cin != planes * 4:
                self.down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

        def forward(self, x):
            out = F.relu(self.b1(self.c1(x)))
            out = F.relu(self.b2(self.c2(out)))
            out = self.b3(self.c3(out))
            return F.relu(out + (x if self.down is None else self.down(x)))

    class MultiExpert(nn.Module):
        def __init__(self, c):
            super().__init__()
            arch = c["arch"].lower()
            cifar = arch == "resnet32"
            groups, base = (32, 4) if arch == "resnext50" else (1, 64)
            blocks, planes, shared, experts = c["blocks"], c["planes"], c["shared_stages"], c["experts"]
            strides = [1, 2, 2] if cifar else [1, 2, 2, 2]
            if cifar:
                self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
                cin = 16
            else:
                self.stem = nn.Sequential(
                    nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
                )
                cin = 64

            def stage(cin, i):
                layers = []
                for b in range(blocks[i]):
                    s = strides[i] if b == 0 else 1
                    if cifar:
                        layers.append(Basic(cin, planes[i], s))
                        cin = planes[i]
                    else:
                        layers.append(Bottleneck(cin, planes[i], s, groups, base))
                        cin = planes[i] * 4
                return nn.Sequential(*layers), cin

            trunk = []
            for i in range(shared):
                m, cin = stage(cin, i)
                trunk.append(m)
            self.trunk = nn.Sequential(*trunk)
            self.experts = nn.ModuleList()
            heads = []
            for _ in range(experts):
                c_e, mods = cin, []
                for i in range(shared, len(blocks)):
                    m, c_e = stage(c_e, i)
                    mods.append(m)
                self.experts.append(nn.Sequential(*mods))
                heads.append(NormedLinear(c_e, c["classes"]) if c["use_norm"] else nn.Linear(c_e, c["classes"]))
            self.heads = nn.ModuleList(heads)
            self.scale = c["scale"]

        def forward(self, x):
            h = self.trunk(self.stem(x))
            outs = []
            for e, head in zip(self.experts, self.heads):
                f = F.adaptive_avg_pool2d(e(h), 1).flatten(1)
                outs.append(head(f) * self.scale)
            return torch.stack(outs, 1)  # [B, E, C]

    def lt_counts(classes, n_max, imbalance):
        return [max(1, int(n_max * (1.0 / imbalance) ** (i / (classes - 1)))) for i in range(classes)]

    def make_loss(c):
        if c["method"] == "ce":
            return lambda z, y: F.cross_entropy(z.mean(1), y)
        counts = lt_counts(c["classes"], 1280.0, 256.0) if c["classes"] == 1000 else lt_counts(c["classes"], 500.0, 100.0)
        m = torch.tensor([1.0 / n**0.25 for n in counts], device=dev)
        m = m * (0.5 / m.max())
        s = 30.0

        def ride(z, y):
            onehot = F.one_hot(y, c["classes"]).float()
            mean = z.mean(1).detach()
            total = 0.0
            for e in range(z.shape[1]):
                ze = z[:, e]
                total = total + F.cross_entropy(ze - s * m * onehot, y)
                total = total - 0.45 * F.kl_div(F.log_softmax(ze, 1), F.softmax(mean, 1), reduction="batchmean")
            return total

        return ride

    torch.backends.cuda.matmul.allow_tf32 = bool(cases[0].get("tf32", False))
    torch.backends.cudnn.allow_tf32 = bool(cases[0].get("tf32", False))
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else dev}, "
          f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    print(f"  {'model':<10} {'batch':>6} {'size':>5} {'torch ms':>10} {'torch img/s':>12} {'candle img/s':>13} {'candle/torch':>13}")
    out = open(args.out, "a") if args.out else None
    for c in cases:
        torch.manual_seed(1)
        model = MultiExpert(c).to(dev).train()
        loss_fn = make_loss(c)
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
