"""Ship a trained level-1 student as a model directory beside its measured record (``reproduction.json``).

Copies ``RUN/student`` to ``--out`` and measures, on the held-out ``../shared/images/style`` photos:
- the reproduction page's protocol (shorter side 256, crop to 16; the recipe ``wct_vgg19_cpu``'s eval set), and
- what ``cdcompress eval recon MODEL --level 1 PHOTOS`` reports (full size, crop to 16),
for the student and the released SE1/SD1, so anyone can re-run the command and compare.

    python benchmarks/ship_student.py runs/wct_vgg19_l1_cpu --recipe wct_vgg19_l1_cpu --out models/wct_vgg19_l1

``--recipe`` names the bundled recipe that reproduces the run; the run's ``config.yaml`` must equal it in every
training setting (name, description and outputs aside), or nothing is shipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from cdcompress.distill.recipe import load_recipe
from cdcompress.distill.run import eval_images
from cdcompress.evaluation.evaluate import image_files, reconstruction
from cdcompress.evaluation.metrics import reconstruction_psnr
from cdcompress.models import convert_cd_release, load

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LEVEL = 1


def figures(model: object, photos: list[Path], protocol_images: list[torch.Tensor]) -> dict[str, float]:
    protocol = reconstruction_psnr(model.encoder(LEVEL), model.decoder(LEVEL), protocol_images)
    full = statistics.fmean(r.psnr_db for r in reconstruction(model, LEVEL, photos))
    return {"heldout_psnr": round(protocol, 4), "eval_recon_mean_psnr": round(full, 4)}


def same_training(run: Path, recipe: str) -> None:
    """Refuse to ship under a recipe name whose settings differ from what the run actually trained with."""
    import yaml

    ran = yaml.safe_load((run / "config.yaml").read_text())
    named = load_recipe(recipe).model_dump(mode="python")
    for data in (ran, named):
        for key in ("name", "description", "output"):
            data.pop(key, None)
    if ran != named:
        raise SystemExit(f"{run}/config.yaml differs from recipe {recipe} in its training settings; name the recipe "
                         "that reproduces the run")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished level-1 recipe run (holds student/ and report.json)")
    parser.add_argument("--recipe", required=True, help="the bundled recipe that reproduces the run")
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "wct_vgg19_l1")
    args = parser.parse_args(argv)
    same_training(args.run, args.recipe)
    report = json.loads((args.run / "report.json").read_text())
    photos = image_files(SHARED / "images" / "style", "--style")
    images = [x for _, x in eval_images(load_recipe("wct_vgg19_cpu"), args.run)]
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.run / "student", args.out)
    ours = figures(load(args.out).eval(), photos, images)
    released = figures(convert_cd_release(SHARED / "reference" / "cd16x", levels=(LEVEL,)).eval(), photos, images)
    record = {"date": time.strftime("%Y-%m-%d"), "recipe": args.recipe,
              "command": f"cdcompress distill --recipe {args.recipe}", "stage_seconds": report["stage_seconds"],
              "notes": report["notes"], **ours, "released_se1_sd1": released,
              "protocol": "heldout_psnr: ../shared/images/style, shorter side 256, crop to 16; eval_recon_mean_psnr: "
                          "`cdcompress eval recon MODEL --level 1 ../shared/images/style/*.jpg` (full size), mean"}
    (args.out / "reproduction.json").write_text(json.dumps(record, indent=1) + "\n")
    print("| model | held-out PSNR, doc protocol | `eval recon` mean PSNR |\n|---|---:|---:|")
    print(f"| ours ({args.out}) | {ours['heldout_psnr']:.2f} | {ours['eval_recon_mean_psnr']:.2f} |")
    print(f"| released SE1/SD1 | {released['heldout_psnr']:.2f} | {released['eval_recon_mean_psnr']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
