#!/usr/bin/env python3
"""Writes fixtures/pil/torchvision_pil.json: what Pillow and torchvision compute for the pieces
of longtail_data::stream (PIL's bilinear resize of a crop, torchvision Resize + CenterCrop, the
three ColorJitter enhancers, a CMYK JPEG's convert('RGB')), on small pseudo-random images.

Run with a Python that has torch, torchvision and Pillow:
    python3 scripts/make_pil_fixtures.py
The JSON records the versions it was made with.
"""
import base64
import io
import json
import random
from pathlib import Path

import PIL
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image


def rand_img(h, w, seed):
    r = random.Random(seed)
    # Smooth-ish content plus noise, so resampling has something to average.
    px = bytes(
        max(0, min(255, int(120 + 90 * ((x * (c + 1) + y * (3 - c)) % 17) / 17 + r.randint(-30, 30))))
        for y in range(h) for x in range(w) for c in range(3)
    )
    return Image.frombytes("RGB", (w, h), px)


def b64(img):
    return base64.b64encode(img.tobytes()).decode()


out = {
    "made_with": {"pillow": PIL.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
    "resize": [],
    "center": [],
    "enhance": [],
}
for k, ((h, w), (top, left, ch, cw), (oh, ow)) in enumerate([
    ((40, 50), (3, 5, 31, 40), (16, 16)),     # downscale both axes
    ((9, 11), (2, 1, 5, 7), (16, 16)),        # upscale both axes
    ((30, 12), (0, 2, 20, 8), (10, 16)),      # down in y, up in x
    ((14, 18), (1, 1, 12, 16), (12, 9)),      # only x changes
    ((120, 90), (10, 4, 100, 80), (7, 6)),    # strong downscale
]):
    img = rand_img(h, w, k)
    res = img.crop((left, top, left + cw, top + ch)).resize((ow, oh), Image.BILINEAR)
    out["resize"].append({"h": h, "w": w, "box": [top, left, ch, cw], "out": [oh, ow],
                          "input": b64(img), "expected": b64(res)})
for k, ((h, w), size, crop) in enumerate([((30, 41), 20, 12), ((75, 100), 51, 44), ((64, 47), 73, 64), ((24, 25), 24, 16)]):
    img = rand_img(h, w, 100 + k)
    res = T.Compose([T.Resize(size), T.CenterCrop(crop)])(img)
    out["center"].append({"h": h, "w": w, "resize": size, "crop": crop,
                          "input": b64(img), "expected": b64(res)})
img = rand_img(9, 7, 200)
for op, fn in [("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast), ("saturation", F.adjust_saturation)]:
    for f in [0.6, 0.83, 1.0, 1.37, 1.4]:
        out["enhance"].append({"op": op, "factor": f, "h": 9, "w": 7,
                               "input": b64(img), "expected": b64(fn(img, f))})
buf = io.BytesIO()
Image.new("CMYK", (8, 8), (200, 40, 90, 30)).save(buf, "JPEG", quality=100)
out["cmyk"] = {"jpeg": base64.b64encode(buf.getvalue()).decode(),
               "expected_rgb": list(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").getpixel((3, 3)))}
path = Path(__file__).resolve().parent.parent / "fixtures" / "pil" / "torchvision_pil.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
