"""``stylize`` without --levels uses the levels the model has (the demo's student has 1-3), for model directories,
loaded models and bundles; levels the model lacks are one line naming the ones it has."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cdcompress
from cdcompress.cli import main
from cdcompress.core.errors import CDCompressError
from cdcompress.models.converters import student_architecture
from cdcompress.stylization.settings import default_levels


def one_line_error(result: object, *needles: str) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def three_level_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[cdcompress.CDModel, Path]:
    torch.manual_seed(0)
    model = student_architecture(0.25, levels=(1, 2, 3))
    return model, cdcompress.save(model, tmp_path_factory.mktemp("models") / "student")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder / "a.png", folder / "b.png"


def test_default_levels() -> None:
    assert default_levels("wct", [1, 2, 3, 4, 5]) == (5, 4, 3, 2, 1)
    assert default_levels("wct", [1, 2, 3]) == (3, 2, 1)
    assert default_levels("adain", [1, 2, 3, 4, 5]) == (4,)
    with pytest.raises(CDCompressError, match="its levels: 3,2,1"):
        default_levels("adain", [1, 2, 3])


def test_cli_stylize_defaults_to_the_models_levels(three_level_model: tuple, images: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    _, model_dir = three_level_model
    content, style = images
    out = tmp_path / "o.png"
    result = CliRunner().invoke(main, ["stylize", "--model", str(model_dir), "--content", str(content),
                                       "--style", str(style), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and Image.open(out).size == (64, 64)


def test_python_stylize_defaults_to_the_models_levels(three_level_model: tuple, images: tuple[Path, Path]) -> None:
    model, model_dir = three_level_model
    content, style = images
    for ref in (model, model_dir):
        result = cdcompress.stylize(ref, content, style)
        assert isinstance(result, torch.Tensor) and result.shape == (1, 3, 64, 64)


def test_levels_the_model_lacks_are_one_line(three_level_model: tuple, images: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    _, model_dir = three_level_model
    content, style = images
    base = ["stylize", "--model", str(model_dir), "--content", str(content), "--style", str(style),
            "--out", str(tmp_path / "o.png")]
    one_line_error(CliRunner().invoke(main, [*base, "--levels", "5"]), "level(s) [5]", "its levels: 1,2,3")
    one_line_error(CliRunner().invoke(main, [*base, "--method", "adain"]), "its levels: 3,2,1")
    assert CliRunner().invoke(main, [*base, "--levels", "2,1"]).exit_code == 0  # explicit levels as before


def test_bundle_stylize_defaults_to_the_bundles_levels(three_level_model: tuple, images: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from cdcompress.export import export_bundle

    model, _ = three_level_model
    content, style = images
    bundle = tmp_path / "bundle"
    export_bundle(model, bundle, levels=[1, 2, 3], progress=False)
    out = tmp_path / "o.png"
    base = ["stylize", "--bundle", str(bundle), "--content", str(content), "--style", str(style), "--out", str(out)]
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    one_line_error(CliRunner().invoke(main, [*base, "--levels", "5,4"]), "its levels: 1,2,3")
