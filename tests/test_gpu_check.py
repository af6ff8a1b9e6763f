"""scripts/gpu_check.sh end to end on the CPU in its quick mode, so the GPU machine's script cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_check_on_cpu_and_writes_one_report(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}  # this interpreter, wherever its venv is
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "gpu_check.json").is_file(), done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = {name: entry.get("error") for name, entry in report["checks"].items() if not entry["ok"]}
    assert done.returncode == 0 and not failed, (failed, done.stderr[-3000:])
    assert set(report["checks"]) == {"suite", "ddp", "amp", "stylize", "onnx"} and report["date"]
    numbers = {name: entry["numbers"] for name, entry in report["checks"].items()}
    assert numbers["ddp"]["backend"] == "gloo" and numbers["onnx"]["provider"] == "CPUExecutionProvider"
    assert numbers["stylize"]["seconds"] > 0 and set(numbers["amp"]) == {"bf16", "fp16"}
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| ddp | pass |" in table and report["device_name"] in table


def test_a_failing_check_is_recorded_and_the_rest_still_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    def broken(args: object, scratch: Path) -> dict:
        raise RuntimeError("no NCCL here")

    monkeypatch.setitem(gpu_check.CHECKS, "ddp", broken)
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--skip", "suite", "amp", "onnx"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1 and not report["checks"]["ddp"]["ok"] and "no NCCL here" in report["checks"]["ddp"]["error"]
    assert report["checks"]["stylize"]["ok"]
