"""The hostile-input fuzz campaign (tests/fuzzing.py) at CI size, plus Pillow's guard staying untouched.

Every kind runs seeded mutations of a valid input through the loader a user reaches; each case must end in
a one-line cdcompress error or a correct result. ``benchmarks/fuzz_inputs.py`` runs the same campaign larger.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fuzzing import KINDS, Counts, run_campaign
from PIL import Image

from cdcompress.core.errors import ImageError
from cdcompress.data import images

#: Cases per kind in CI (the benchmark's table uses more); every kind has mutations of every sub-kind at this size.
CI_CASES = {"model-json": 80, "safetensors": 60, "shapes": 60, "bundle-manifest": 60, "onnx-graph": 40, "recipe": 90,
            "image": 120, "image-cli": 40}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Counts]:
    return run_campaign(tmp_path_factory.mktemp("fuzz"), CI_CASES, seed=2026)


@pytest.mark.parametrize("kind", KINDS)
def test_every_mutation_ends_in_one_line_or_a_correct_result(campaign: dict[str, Counts], kind: str) -> None:
    counts = campaign[kind]
    assert counts.cases == CI_CASES[kind]
    assert not counts.failures, "\n".join(f"{f.case}: {f.detail}" for f in counts.failures)
    assert counts.errors and (counts.correct or kind == "onnx-graph"), counts  # both outcomes are exercised


def _png(path: Path, side: int = 64) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def test_threads_decode_concurrently_without_touching_pillows_guard(tmp_path: Path) -> None:
    """Both threads are inside ``open_image`` at once (a barrier, not timings): no lock is held while decoding."""
    paths = [_png(tmp_path / f"{i}.png") for i in range(2)]
    before = Image.MAX_IMAGE_PIXELS
    inside = threading.Barrier(2, timeout=10)
    seen: list[object] = []

    def decode(path: Path) -> None:
        with images.open_image(path) as img:
            inside.wait()  # raises BrokenBarrierError if the other thread cannot get in
            seen.append(Image.MAX_IMAGE_PIXELS)
            img.load()
        seen.append(images.load_image(path).shape)

    threads = [threading.Thread(target=decode, args=(p,)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not inside.broken and len(seen) == 4, seen
    assert seen.count(before) == 2 and before == Image.MAX_IMAGE_PIXELS


def test_cdcompress_bound_replaces_pillows_without_changing_it(tmp_path: Path) -> None:
    from test_tiling import _png_header_only

    before = Image.MAX_IMAGE_PIXELS
    big = _png_header_only(tmp_path / "big.png", 20000, 15000)  # 300 Mpx: over Pillow's 179 Mpx error, under ours
    assert images.image_size(big) == (15000, 20000) and before == Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(big)  # the process-wide guard still protects code that calls Pillow directly
    with pytest.raises(ImageError) as info:
        images.load_image(_png_header_only(tmp_path / "huge.png", 40000, 30000))
    message = str(info.value)
    assert "\n" not in message and "above cdcompress's bound" in message and before == Image.MAX_IMAGE_PIXELS


def test_only_raster_formats_are_opened(tmp_path: Path) -> None:
    """A PostScript file named .jpg is refused before Pillow's EPS reader (which would run Ghostscript) sees it."""
    eps = tmp_path / "x.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="cannot decode image"):
        images.load_image(eps)
