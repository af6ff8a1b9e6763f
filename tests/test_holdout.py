"""Held-out images are held out by content: the bundled split is disjoint, and a recipe that leaks is refused."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from cdcompress.cli import main
from cdcompress.data.holdout import content_digest
from cdcompress.distill.run import data_paths


def pixels(path: Path) -> str:
    """The test's own content hash (decoded RGB and shape), independent of the package's."""
    array = np.asarray(Image.open(path).convert("RGB"))
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def test_bundled_heldout_photos_are_not_training_photos(tmp_path: Path) -> None:
    train = data_paths(["skimage"], tmp_path)
    held_out = data_paths(["skimage-heldout"], tmp_path)
    assert len(held_out) == 2 and train
    trained = {pixels(p): p.name for p in train}
    leaks = {p.name: trained[pixels(p)] for p in held_out if pixels(p) in trained}
    assert not leaks, f"held-out photos equal to training photos: {leaks}"
    # scikit-image's cat is its chelsea: the two must never sit on both sides of the split (they did before).
    assert not {"cat", "chelsea"} <= {p.stem for p in [*train, *held_out]}


def test_content_digest_ignores_name_and_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.open(tmp_path / "a.png").save(tmp_path / "b.bmp")
    Image.open(tmp_path / "a.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "c.png")
    assert content_digest(tmp_path / "a.png") == content_digest(tmp_path / "b.bmp")
    assert content_digest(tmp_path / "a.png") != content_digest(tmp_path / "c.png")


def test_recipe_whose_eval_image_is_a_training_image_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = tmp_path / "train"
    train.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(train / f"photo{i}.jpg", quality=95)
    copy = tmp_path / "held" / "renamed.png"
    copy.parent.mkdir()
    Image.open(train / "photo1.jpg").save(copy)  # the same decoded pixels under another name and format
    recipe = tmp_path / "leak.yaml"
    recipe.write_text(textwrap.dedent(
        f"""
        name: leak
        levels: [1]
        teacher: {{source: builtin, path: vgg19, pretrained: none}}
        collaborator: {{source: train}}
        student: {{width: 0.5}}
        data: {{train: [{train}], eval: [{copy.parent}], resize: 40, crop: 32, eval_size: 48}}
        stages:
          collaborator: {{steps: 1, batch: 2, lr: 1.0e-3}}
          distill: {{steps: 1, batch: 2, lr: 1.0e-3}}
          decoder: {{steps: 1, batch: 2, lr: 1.0e-3}}
        """))
    result = CliRunner().invoke(main, ["distill", "--recipe", str(recipe), "--out", str(tmp_path / "run")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    assert "renamed.png" in lines[0] and "photo1.jpg" in lines[0] and "drop it" in lines[0], lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
