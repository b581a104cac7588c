#!/usr/bin/env python3
"""PyTorch reference for `longtail bench data`: the same image files through a DataLoader with
the official ImageNet-LT training transform (RIDE / SADE `imagenet_lt_data_loaders.py`):
PIL open + convert('RGB') -> RandomResizedCrop(side) -> RandomHorizontalFlip -> ColorJitter(0.4,
0.4, 0.4, 0) -> ToTensor -> Normalize(ImageNet). `--workers` DataLoader processes, one torch
thread each, shuffled, batch `--batch`; one warm-up batch, then `--images` images timed.
Prints `pytorch img/s: X` (parsed by longtail) and the peak RSS of the main process + workers.
"""
import argparse
import resource
import time

import torch
import torchvision.transforms as T
from PIL import Image


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with open(self.paths[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.tf(img), 0


def init_worker(_):
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", required=True, help="one image path per line")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--side", type=int, default=224)
    a = ap.parse_args()
    torch.set_num_threads(1)
    paths = [l.strip() for l in open(a.files) if l.strip()]
    tf = T.Compose([
        T.RandomResizedCrop(a.side),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.4, 0.4, 0.4, 0),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    loader = torch.utils.data.DataLoader(
        Files(paths, tf), batch_size=a.batch, shuffle=True, num_workers=a.workers,
        worker_init_fn=init_worker, persistent_workers=False, prefetch_factor=2 if a.workers else None)
    it = iter(loader)
    next(it)  # warm-up: worker start
    done, t0 = 0, time.perf_counter()
    for x, _ in it:
        done += x.shape[0]
        if done + a.batch > a.images:
            break
    secs = time.perf_counter() - t0
    print(f"pytorch: {done} images in {secs:.2f} s, {a.workers} workers, torch {torch.__version__}")
    print(f"pytorch img/s: {done / secs:.1f}")
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"pytorch peak RSS: main {me:.0f} MiB, largest worker {kids:.0f} MiB")


if __name__ == "__main__":
    main()
