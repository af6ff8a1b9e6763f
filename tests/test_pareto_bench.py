"""benchmarks/pareto.py --quick: the U-Net study at tiny settings, its table and results.json consistent (every
budget met within 5%, the same widths for the three methods at a budget, a latency and a PSNR for every arm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"CD", "feature-KD", "prune-only"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("pareto")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pareto.py"), "--study", "unet", "--quick",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "pareto.png").is_file()
    return done.stdout, json.loads((out / "results.json").read_text())


def test_every_budget_has_three_methods_met_within_five_percent(quick: tuple[str, dict]) -> None:
    _, results = quick
    study = results["studies"]["unet"]
    assert results["quick"] and len(study["budgets"]) >= 2
    for share in study["budgets"]:
        arms = [a for a in study["arms"].values() if a["budget"] == share]
        assert {a["method"] for a in arms} == METHODS
        for arm in arms:
            assert arm["met"] and abs(arm["error"]) <= 0.05, arm
            assert abs(arm["share_measured"] / (share / 100) - 1) <= 0.05
            assert arm["macs_recounted"] == arm["macs_measured"]  # the saved student really has the searched cost
            assert arm["latency_ms"] > 0 and arm["student_psnr"] > 0
        assert len({json.dumps(a["widths"], sort_keys=True) for a in arms}) == 1  # the search ignores the method
    assert all(study["same_widths"].values())
    assert study["teacher_latency"]["ms"] > 0


def test_table_matches_the_json(quick: tuple[str, dict]) -> None:
    stdout, results = quick
    study = results["studies"]["unet"]
    lines = [line for line in stdout.splitlines() if line.startswith("| unet |")]
    assert len(lines) == 1 + len(METHODS) * len(study["budgets"])  # the teacher, then three methods per budget
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        arm = study["arms"][f"{cells[1]}/{cells[2]}"]
        assert cells[5] == f"{arm['latency_ms']:.2f}" and cells[6] == f"{arm['student_psnr']:.2f}"
        assert f"({100 * arm['error']:+.2f}%)" in cells[4]
