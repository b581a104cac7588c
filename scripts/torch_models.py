"""The networks and losses of the PyTorch reference benchmarks, shared by
`gpu_bench_torch.py` (GPU, `just gpu-check`) and `bench_train_torch.py` (CPU, `longtail bench
train`): a multi-expert ResNet (CIFAR ResNet-32 with option-A shortcuts, or the ImageNet
ResNet/ResNeXt-50 bottleneck family), rebuilt from the fields the Rust side records for its
model (arch, blocks, planes, shared stages, experts, classes, cosine classifier and its scale),
and the training loss of the method (`ce`: softmax cross-entropy of the mean logits; `ride`: the
LDAM-margin cross-entropy of each expert minus 0.45 x the KL diversity to the detached mean, as
RIDE).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


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

def make_loss(c, dev):
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
