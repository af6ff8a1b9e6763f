"""The level-1 student shipped in models/wct_vgg19_l1: it loads, reconstructs, and keeps its documented figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from skimage import data

import cdcompress
from cdcompress.cli import main
from cdcompress.evaluation.metrics import psnr

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL = REPO_ROOT / "models" / "wct_vgg19_l1"
STYLE = REPO_ROOT.parent / "shared" / "images" / "style"


def test_shipped_student_is_small_and_loads_without_pickles() -> None:
    model = cdcompress.load(MODEL)
    assert model.levels == [1] and model.encoder(1).spec.widths == (24,)
    assert sum(p.numel() for p in model.encoder(1).parameters()) == 684  # SE1's size
    assert sum(f.stat().st_size for f in MODEL.iterdir()) < 64 * 1024
    assert not list(MODEL.glob("*.pt*"))  # safetensors + JSON only


@torch.no_grad()
def test_shipped_student_reconstructs_a_photo_it_never_saw() -> None:
    """scikit-image's coffee is neither a training nor a held-out photo of the run."""
    model = cdcompress.load(MODEL).eval()
    photo = torch.from_numpy(data.coffee()).permute(2, 0, 1).float().div(255)[None, :, :384, :384]
    assert psnr(model.decoder(1)(model.encoder(1)(photo)).clamp(0, 1), photo) > 38


@pytest.mark.skipif(not STYLE.is_dir(), reason="../shared/images is not available")
def test_eval_recon_gives_the_documented_figure(tmp_path: Path) -> None:
    """`cdcompress eval recon models/wct_vgg19_l1 --level 1 PHOTOS` on the held-out photos at the doc's protocol
    (shorter side 256) gives the PSNR that docs/reproduction_wct.md and the model's own record quote."""
    record = json.loads((MODEL / "reproduction.json").read_text())
    photos = sorted(str(p) for p in STYLE.glob("*.jpg"))
    out = tmp_path / "recon.json"
    result = CliRunner().invoke(main, ["eval", "recon", str(MODEL), "--level", "1", *photos, "--json", str(out)])
    assert result.exit_code == 0, result.output
    measured = [row["psnr_db"] for row in json.loads(out.read_text())]
    assert sum(measured) / len(measured) == pytest.approx(record["eval_recon_mean_psnr"], abs=0.01)
    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import eval_images

    model = cdcompress.load(MODEL).eval()
    images = [x for _, x in eval_images(load_recipe("wct_vgg19_cpu"), tmp_path)]
    with torch.no_grad():
        protocol = [psnr(model.decoder(1)(model.encoder(1)(x)).clamp(0, 1), x) for x in images]
    assert sum(protocol) / len(protocol) == pytest.approx(record["heldout_psnr"], abs=0.01)
