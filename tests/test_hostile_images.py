"""A corpus of awkward and broken image files, driven through loading, training and stylization.

Decodable oddities (grayscale, palette, RGBA, 16-bit, CMYK, EXIF rotation) must come out as the right
RGB picture; unusable files (truncated, empty, not an image, 1x1, over the pixel bound) must be skipped
and counted when training and refused with one line when stylizing.
"""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli_foundation import assert_one_line_error, run
from test_reliability import cli, finish, write_recipe
from test_tiling import _png_header_only

from cdcompress.core.errors import ImageError
from cdcompress.data.batches import CropSampler
from cdcompress.data.images import load_image

SIDE = 64
UNUSABLE = ("truncated.jpg", "empty.png", "not_an_image.jpg", "one_pixel.png", "over_limit.png")
DECODABLE = ("gray.png", "palette.png", "rgba.png", "sixteen_bit.png", "cmyk.jpg", "exif_rotated.jpg")


def _photo() -> np.ndarray:
    """A smooth colour picture (gradients survive JPEG well, so colour checks can be tight)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / (SIDE - 1)
    return (np.stack([x, y, 1 - x * y], axis=-1) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    rgb = Image.fromarray(_photo())
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    rgba = rgb.convert("RGBA")
    alpha = np.full((SIDE, SIDE), 255, np.uint8)
    alpha[:, : SIDE // 2] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    ramp = (np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) * 13 + 1).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "sixteen_bit.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=98)
    halves = np.zeros((SIDE // 2, SIDE, 3), np.uint8)
    halves[:, : SIDE // 2] = (255, 0, 0)  # stored: red left, blue right
    halves[:, SIDE // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(halves).save(folder / "exif_rotated.jpg", exif=exif.tobytes(), quality=98)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "not_an_image.jpg").write_text("name: this is a recipe, not a photo\n")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "one_pixel.png")
    _png_header_only(folder / "over_limit.png", 40000, 40000)  # 1.6 Gpx > the 1.07 Gpx bound: a cheap bomb
    return folder


def _hwc(path: Path) -> np.ndarray:
    return load_image(path)[0].permute(1, 2, 0).numpy()


def test_decodable_modes_become_the_right_rgb_picture(corpus: Path) -> None:
    photo = _photo().astype(np.float32) / 255
    gray = _hwc(corpus / "gray.png")
    assert gray.shape == (SIDE, SIDE, 3) and np.array_equal(gray[..., 0], gray[..., 2])
    assert np.abs(gray[..., 0] - photo @ np.array([0.299, 0.587, 0.114], np.float32)).max() < 2 / 255
    with Image.open(corpus / "palette.png") as palette:
        assert palette.mode == "P"
        looked_up = np.asarray(palette.convert("RGB"), np.float32) / 255
    assert np.array_equal(_hwc(corpus / "palette.png"), looked_up)  # indices resolved through the palette
    rgba = _hwc(corpus / "rgba.png")
    assert np.array_equal(rgba[:, : SIDE // 2], np.ones_like(rgba[:, : SIDE // 2]))  # transparent -> white
    assert np.abs(rgba[:, SIDE // 2 :] - photo[:, SIDE // 2 :]).max() < 1e-6
    sixteen = _hwc(corpus / "sixteen_bit.png")[..., 0]
    expected = (np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) * 13 + 1).astype(np.uint16) / 65535
    assert np.abs(sixteen - expected).max() < 1e-6  # full 16-bit precision, not 8-bit
    assert np.abs(_hwc(corpus / "cmyk.jpg") - photo).mean() < 0.03
    rotated = _hwc(corpus / "exif_rotated.jpg")
    assert rotated.shape == (SIDE, SIDE // 2, 3)  # displayed upright: the stored width became the height
    top, bottom = rotated[: SIDE // 2 - 4].mean((0, 1)), rotated[SIDE // 2 + 4 :].mean((0, 1))
    assert top[0] > 0.9 > 0.1 > top[2] and bottom[2] > 0.9 > 0.1 > bottom[0]  # red on top after rotating clockwise


@pytest.mark.parametrize("name", UNUSABLE[:3] + UNUSABLE[4:])
def test_undecodable_files_raise_one_line_errors(corpus: Path, name: str) -> None:
    with pytest.raises(ImageError) as info:
        load_image(corpus / name)
    message = str(info.value)
    assert "\n" not in message and name in message and ("use a valid" in message or "downscale" in message)


def test_training_skips_and_counts_every_unusable_file(corpus: Path) -> None:
    sampler = CropSampler(sorted(corpus.iterdir()), batch_size=4, resize=40, crop=32, seed=3)
    for step in range(8):  # 32 samples over 11 files: every file is visited
        batch = sampler[step]
        assert batch.shape == (4, 3, 32, 32) and bool(batch.isfinite().all()) and 0 <= batch.min() <= batch.max() <= 1
    assert sorted(Path(p).name for p in sampler.skipped) == sorted(UNUSABLE)
    assert "too small to train on" in sampler.skipped[str(corpus / "one_pixel.png")]
    assert all("\n" not in why for why in sampler.skipped.values())


def test_a_real_run_on_the_corpus_finishes_and_summarises_the_skips(corpus: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=2).read_text().replace("train: [skimage]", f"train: [{corpus}]")
    (tmp_path / "r.yaml").write_text(recipe.replace("batch: 4", "batch: 11"))  # one step reads all 11 files
    finish(cli("distill", "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "run"))
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"skipped {len(UNUSABLE)} training image(s)" in report
    assert all(name in report for name in UNUSABLE) and not any(name in report for name in DECODABLE)


def _stylize(model: Path, content: Path, style: Path, out: Path) -> tuple[int, str]:
    return run("stylize", "--model", model, "--content", content, "--style", style, "--levels", "2,1", "--out", out)


@pytest.mark.parametrize("name", UNUSABLE)
@pytest.mark.parametrize("role", ["content", "style"])
def test_stylize_refuses_unusable_files_with_one_line(random_student_dir: Path, corpus: Path, tmp_path: Path,
                                                      name: str, role: str) -> None:
    good, bad = corpus / "gray.png", corpus / name
    content, style = (bad, good) if role == "content" else (good, bad)
    code, text = _stylize(random_student_dir, content, style, tmp_path / "out.png")
    assert_one_line_error(code, text, name)
    assert not (tmp_path / "out.png").exists()


def test_stylize_accepts_every_decodable_mode(random_student_dir: Path, corpus: Path, tmp_path: Path) -> None:
    for name in DECODABLE:
        out = tmp_path / f"{Path(name).stem}.png"
        code, text = _stylize(random_student_dir, corpus / name, corpus / "rgba.png", out)
        assert code == 0, text
        with Image.open(corpus / name) as source, Image.open(out) as result:
            upright = source.size[::-1] if "exif" in name else source.size
            assert result.mode == "RGB" and result.size == upright


def test_sigterm_during_tiled_stylize_removes_scratch_files(random_student_dir: Path, corpus: Path,
                                                           tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(_photo(), (12, 12, 1))).save(big)  # 768 x 768
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = cli("stylize", "--model", random_student_dir, "--content", big, "--style", corpus / "gray.png",
               "--tile", "64", "--workdir", scratch, "--out", tmp_path / "out.png")
    deadline = time.monotonic() + 120
    while not any(scratch.glob("cdcompress-stylize-*/image0.f32")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the tiled run never started"
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert list(scratch.iterdir()) == [] and not (tmp_path / "out.png").exists()
