"""Pictures a person can read: labelled grids (a header over unchanged pixels), comparison.png and the sample grids
of a tiny real run with their column titles, loss.png as a grid of labelled panels at a readable size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFont
from torch import nn

from cdcompress.data.annotate import BACKGROUND, MIN_FONT, header_height, header_layout, header_strip, with_header
from cdcompress.data.batches import Batch
from cdcompress.distill import TrainConfig, Trainer
from cdcompress.distill.report import comparison_titles, loss_figure, loss_series, plot_losses

DISTILL_TITLES = ["input", "teacher pair", "collaborator on Q·F'"]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("side", [32, 64, 256])
def test_the_header_goes_above_the_grid_and_leaves_its_pixels_alone(side: int) -> None:
    grid = torch.rand(1, 3, 2 * side, 3 * side, generator=torch.Generator().manual_seed(side))
    titles, title = ["input", "teacher (level 3)", "student (level 3)"], "level 3 · held-out"
    labelled = with_header(grid, titles, title)
    height = header_height(3 * side, titles, title)
    assert height >= 20 and labelled.shape == (1, 3, 2 * side + height, 3 * side)
    assert torch.equal(labelled[..., height:, :], grid)  # the grid itself, bit for bit
    strip = header_strip(3 * side, titles, title)
    assert strip.shape == (height, 3 * side, 3) and (strip < BACKGROUND).any()  # text drawn on the background
    assert torch.equal(labelled[0, :, :height], torch.from_numpy(strip.copy()).permute(2, 0, 1) / 255)
    assert with_header(grid) is grid  # nothing to say: no header


@pytest.mark.parametrize("width", [96, 192, 768])
def test_titles_shrink_and_wrap_to_fit_their_columns(width: int) -> None:
    layout = header_layout(width, DISTILL_TITLES, "distill_L1 · step 4")
    font, column = ImageFont.load_default(size=layout.font_size), width / len(DISTILL_TITLES)
    assert all(font.getlength(line) <= column for lines in layout.column_lines for line in lines)  # none overlaps
    assert layout.font_size == {96: MIN_FONT, 192: 10, 768: 16}[width]  # as large as the words allow
    if width == 192:  # 64-px columns: the long title wraps at its space instead of being cut
        assert layout.column_lines[2] == ("collaborator", "on Q·F'")
    assert header_height(width, [], "") == 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_recipes import VALID, run

    folder = tmp_path_factory.mktemp("pictures")
    (folder / "tiny.yaml").write_text(VALID)
    code, text = run("distill", "--recipe", folder / "tiny.yaml", "--out", folder / "run")
    assert code == 0, text
    return folder / "run"


def test_comparison_png_names_its_columns_the_level_and_the_photos(tiny_run: Path) -> None:
    picture = _pixels(tiny_run / "comparison.png")
    height, width = picture.shape[:2]
    side = width // 3
    names = json.loads((tiny_run / "report.json").read_text())["eval_images"][:3]
    title = f"level 1 · held-out: {', '.join(Path(n).stem for n in names)}"
    header = header_height(width, comparison_titles(1), title)
    assert header > 0 and height == len(names) * side + header
    assert np.array_equal(picture[:header], header_strip(width, comparison_titles(1), title))
    assert comparison_titles(1) == ["input", "teacher (level 1)", "student (level 1)"]


def test_sample_grids_of_a_run_carry_one_title_per_view(tiny_run: Path) -> None:
    picture = _pixels(tiny_run / "samples" / "distill_L1_step0000004.png")
    height, width = picture.shape[:2]
    side = width // len(DISTILL_TITLES)  # 32² crops, one row per sample (batch 2)
    header = header_height(width, DISTILL_TITLES, "distill_L1 · step 4")
    assert height == 2 * side + header
    assert np.array_equal(picture[:header], header_strip(width, DISTILL_TITLES, "distill_L1 · step 4"))
    decoder = _pixels(tiny_run / "samples" / "decoder_L1_step0000004.png")  # input | teacher pair | decoder
    assert decoder.shape[0] == 2 * side + header_height(width, ["input", "teacher pair", "decoder"], "decoder_L1 · step 4")


class _Conv:
    """A one-conv reconstruction task showing two views; ``sample_titles`` as given (a list, a method or absent)."""

    name = "conv"

    def __init__(self, titles: object = None) -> None:
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        if titles is not None:
            self.sample_titles = titles

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"conv": self.conv}

    def set_train(self, mode: bool) -> None:
        self.conv.train(mode)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"total": F.mse_loss(self.conv(batch.input), batch.target)}

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        return [batch.input, self.conv(batch.input)]


@pytest.mark.parametrize(("titles", "labelled"), [(None, False), (["input", "output"], True),
                                                  (lambda batch: ["input", "output"], True),
                                                  (["input", "output", "target"], False)])
def test_write_samples_labels_the_grid_only_when_the_titles_match_the_views(tmp_path: Path, titles: object,
                                                                            labelled: bool) -> None:
    data = [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    config = TrainConfig(steps=2, lr=1e-2, log_every=1, sample_every=2, checkpoint_every=2)
    Trainer(_Conv(titles), data, config, tmp_path).fit()
    picture = _pixels(tmp_path / "samples" / "conv_step0000002.png")
    header = header_height(32, ["input", "output"], "conv · step 2") if labelled else 0
    assert picture.shape[:2] == (2 * 16 + header, 2 * 16)


def _metrics(path: Path, stages: list[str], steps: int = 5) -> Path:
    with path.open("w") as out:
        for stage in stages:
            for step in range(1, steps + 1):
                record = {"stage": stage, "step": step, "lr": 1e-3, "time": 0.1, "total": 1.0 / step, "pixel": 0.5 / step,
                          "embed/conv1": 0.1}
                out.write(json.dumps(record) + "\n")
            out.write(json.dumps({"stage": stage, "step": steps, "heldout/psnr": 20.0}) + "\n")
    return path


def _close(figure: object) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_loss_png_is_a_readable_grid_of_labelled_panels(tmp_path: Path) -> None:
    stages = [f"{kind}_L{level}" for level in (1, 2, 3) for kind in ("collaborator", "distill", "decoder")]
    series = loss_series(_metrics(tmp_path / "metrics.jsonl", stages))
    assert list(series) == stages and set(series["distill_L2"]) == {"total", "pixel"}  # per-tap terms left out
    figure = loss_figure(series)
    assert [ax.get_title() for ax in figure.axes] == stages  # one panel per stage, one row per level
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel().startswith("loss") and ax.get_legend() is not None
               for ax in figure.axes)
    assert all(ax.get_yscale() == "log" for ax in figure.axes)
    width, height = Image.open(plot_losses(tmp_path / "metrics.jsonl", tmp_path / "loss.png")).size
    assert 900 <= width <= 1600 and 600 <= height <= 1400  # was 4158x374 for these nine stages
    _close(figure)


def test_stages_without_levels_fill_rows_of_three(tmp_path: Path) -> None:
    series = loss_series(_metrics(tmp_path / "metrics.jsonl", ["a", "b", "c", "d"]))
    figure = loss_figure(series)
    assert [ax.get_title() for ax in figure.axes] == ["a", "b", "c", "d"]
    assert [ax.get_subplotspec().rowspan.start for ax in figure.axes] == [0, 0, 0, 1]
    _close(figure)
    assert loss_series(tmp_path / "missing.jsonl") == {}
