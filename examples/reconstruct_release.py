"""Convert the paper's released 16x students and reconstruct a photo at every level.

Usage: python examples/reconstruct_release.py [CD16X_DIR] [IMAGE] [OUT_DIR]
(defaults point at ../shared, as laid out beside a development checkout).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cdcompress.data.images import load_image, save_image
from cdcompress.evaluation.evaluate import reconstruct
from cdcompress.evaluation.metrics import psnr
from cdcompress.models import convert_cd_release

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> None:
    release = Path(argv[0]) if argv else ROOT.parent / "shared/reference/cd16x"
    image_path = Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared/images/content/in4.jpg"
    out_dir = Path(argv[2]) if len(argv) > 2 else Path("out/reconstruct")
    model = convert_cd_release(release).eval()
    image = load_image(image_path, crop_multiple=16)
    rows = [image]
    for level in model.levels:
        output = reconstruct(model, level, image)
        rows.append(output)
        print(f"level {level}: PSNR {psnr(output, image):.2f} dB")
    path = save_image(torch.cat(rows, dim=-1), out_dir / "levels.png")
    print(f"wrote {path} (input | level 1 .. level 5)")


if __name__ == "__main__":
    main(sys.argv[1:])
