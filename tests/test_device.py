"""Device names from the CLI and recipes: checked before any model loads, one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cdcompress.cli import main
from cdcompress.core.device import resolve_device
from cdcompress.core.errors import CDCompressError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")


def _one_line_exit_2(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_resolve_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", ""):
        with pytest.raises(CDCompressError, match="not a device name"):
            resolve_device(bad)
    with pytest.raises(CDCompressError, match="not supported"):
        resolve_device("meta")


@NO_CUDA
def test_cuda_without_a_gpu_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CDCompressError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 30, 200)).save(photo)
    line = _one_line_exit_2(["stylize", "--model", "vgg19-x0.25", "--content", str(photo), "--style", str(photo),
                             "--device", "cuda", "--out", str(tmp_path / "o.png")])
    assert "no CUDA GPU" in line and "--device cpu" in line
    assert not (tmp_path / "o.png").exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text((Path(__file__).resolve().parents[1] / "recipes" / "demo_offline.yaml").read_text()
                      + "device: cuda\n")
    line = _one_line_exit_2(["distill", "--recipe", str(recipe), "--out", str(tmp_path / "run")])
    assert "no CUDA GPU" in line
    assert not (tmp_path / "run").exists()


def test_device_flag_is_for_models_not_bundles(tmp_path: Path) -> None:
    line = _one_line_exit_2(["stylize", "--bundle", str(tmp_path), "--content", "c.png", "--style", "s.png",
                             "--device", "cuda"])
    assert "--device and --precision apply to --model" in line
    line = _one_line_exit_2(["stylize", "--bundle", str(tmp_path), "--content", "c.png", "--style", "s.png",
                             "--precision", "bf16"])
    assert "--device and --precision apply to --model" in line
