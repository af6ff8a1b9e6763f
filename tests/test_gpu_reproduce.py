"""benchmarks/gpu_reproduce.py end to end on the CPU at a tiny budget (so it cannot rot before a GPU is at hand),
and its one-line answer when a GPU is asked for without one."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
TEACHER = SHARED / "reference" / "wct-vgg19"
RELEASE = SHARED / "reference" / "cd16x"
SMALL = ["data.resize=64", "data.crop=48", "stages.distill.batch=2", "stages.decoder.batch=2", "data.workers=0",
         "data.eval_size=64"]


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_reproduce", REPO_ROOT / "benchmarks" / "gpu_reproduce.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_reproduce_on_cpu(tmp_path: Path) -> None:
    if not TEACHER.is_dir() or not (RELEASE / "se3.pth").is_file():
        pytest.skip("../shared/reference/wct-vgg19 or ../shared/reference/cd16x is not available")
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--minutes", "0.2", "--probe-steps", "4", "--out", str(out)]
    script().main([*argv, *(arg for item in SMALL for arg in ("--set", item))])
    assert (out / "curve.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["psnr"]) == {"teacher", "released", "ours"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in results["psnr"].values())
    assert all(results["plan"][stage]["steps"] > 0 for stage in ("distill", "decoder"))
    assert any(s.startswith("stages.distill.steps=") for s in results["overrides"])
    assert "| level 3 |" in (out / "report.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_reproduce_without_a_gpu(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        script().main(["--minutes", "1", "--out", str(tmp_path)])
    message = str(raised.value.code)
    assert "cuda" in message and "no CUDA GPU" in message and "\n" not in message
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_gpu_reproduce_missing_teacher(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        script().main(["--device", "cpu", "--minutes", "1", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path)])
    message = str(raised.value.code)
    assert "teacher folder" in message and "nope" in message and "\n" not in message
