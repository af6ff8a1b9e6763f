"""Every benchmark script runs end to end and prints its table (tiny settings; the figures are in docs/benchmarks.md).

The documented full runs take minutes to an hour each; these keep the scripts from rotting between those runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks"
CD16X = REPO_ROOT.parent / "shared" / "reference" / "cd16x"
IMAGES = REPO_ROOT.parent / "shared" / "images"
NEEDS_SHARED = pytest.mark.skipif(not (CD16X / "se5.pth").is_file() or not IMAGES.is_dir(),
                                  reason="../shared is not available")


def run_benchmark(script: str, *args: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO_ROOT, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "|---" in proc.stdout, proc.stdout[-2000:]  # a Markdown table
    return proc.stdout


def test_table3_cost() -> None:
    out = run_benchmark("table3_cost.py", "--size", "256", "--time-size", "96", "--tile", "0", "--probe-sizes", "64",
                        "--repeats", "1", "--pairs", "1", "--max-memory", "1GiB")
    assert "interleaved pairs" in out and "6,962.1" not in out  # 256² MACs, not the 3000² default
    assert "17,120,444" in out  # the teacher's per-level encoder parameters (paper: 17.1M)


@NEEDS_SHARED
def test_table2_gram(tmp_path: Path) -> None:
    out = run_benchmark("table2_gram.py", "--max-side", "96", "--gram-levels", "1,2", "--level", "2",
                        "--student", f"random-quarter={_random_student(tmp_path)}")
    assert "random-quarter" in out


def _random_student(tmp_path: Path) -> Path:
    from cdcompress.models import save, student_architecture

    return save(student_architecture(0.25), tmp_path / "quarter")


@NEEDS_SHARED
def test_ultrares(tmp_path: Path) -> None:
    out = run_benchmark("ultrares.py", "--sizes", "256", "--untiled-max", "256", "--tile", "128", "--levels", "2,1",
                        "--workdir", tmp_path)
    assert "256" in out


@NEEDS_SHARED
def test_export(tmp_path: Path) -> None:
    out = run_benchmark("export.py", "--size", "96", "--repeat", "1", "--threads", "2", "--int8", cwd=tmp_path)
    assert "INT8 bundle (int8 levels" in out and "speed-up of INT8 over the fp32 bundle" in out


def test_distill_throughput() -> None:
    run_benchmark("distill_throughput.py", "--level", "2", "--crop", "32", "--batch", "2", "--steps", "1")


def test_train_memory(tmp_path: Path) -> None:
    # 60 steps: the sampler needs a distill stage that outlasts a few 0.25 s polls (12 steps could finish between two)
    run_benchmark("train_memory.py", "--steps", "60", "--every", "20", "--warmup", "20", "--bound", "1024",
                  "--out", tmp_path)


@NEEDS_SHARED
def test_cd16x_half(tmp_path: Path) -> None:
    run_benchmark("cd16x_half.py", "--seeds", "0", "--steps", "2", "--out", tmp_path / "runs", "--docs", tmp_path)


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "reference" / "wct-vgg19").is_dir(), reason="no WCT teacher")
@NEEDS_SHARED
def test_wct_reproduction(tmp_path: Path) -> None:
    """The study end to end at level 1 (real teacher, released se1/sd1), two methods, and its docs from results.json."""
    args = ["--levels", "1", "--seeds", "0", "--steps", "2", "--decoder-steps", "2", "--eval-every", "1", "--variants",
            "cd", "prune", "--max-side", "64", "--out", tmp_path / "runs", "--docs", tmp_path / "docs"]
    out = run_benchmark("wct_reproduction.py", *args)
    assert "released 16x student (se1/sd1) | 684 |" in out and "prune-only (FP-slimmed), 2+2 steps, 1 seeds" in out
    doc = (tmp_path / "docs" / "reproduction_wct_baselines.md").read_text()
    assert "## Targets" in doc and "python benchmarks/wct_reproduction.py --levels 1" in doc
    assert (tmp_path / "docs" / "images" / "reproduction_L1.png").stat().st_size > 0
    again = run_benchmark("wct_reproduction.py", *args, "--report-only")  # the docs again, without training
    assert again == out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_benchmark_says_it_needs_a_gpu() -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_stylize.py")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120)
    assert proc.returncode != 0 and "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_gpu_benchmark_table_on_cpu() -> None:
    """The GPU script's own logic (sizes, precisions, ratios, target line) on the CPU, so it cannot rot between
    the rare GPU sessions."""
    out = run_benchmark("gpu_stylize.py", "--device", "cpu", "--sizes", "64,96x64", "--precisions", "fp32,bf16",
                        "--repeats", "1", "--student", "vgg19-x0.25")
    assert "| 96x64, ms | bf16 |" in out and "| 64², ms | fp32 |" in out and "peak GPU memory" not in out


def test_ddp_throughput() -> None:
    out = run_benchmark("ddp_throughput.py", "--steps", "2", "--batch", "4", "--crop", "32", "--level", "2")
    assert "| 2 | 1 | no communication (no-op hook) |" in out and "| 1 | 2 | with communication |" in out


@NEEDS_SHARED
def test_cpu_runtimes() -> None:
    out = run_benchmark("cpu_runtimes.py", "--size", "128", "--repeat", "1")
    assert "| onnxruntime, fp32 bundle (OnnxBackend) |" in out and "GFLOP/s" in out


def test_train_allocator() -> None:
    out = run_benchmark("train_allocator.py", "--steps", "2", "--repeats", "1", "--crop", "48", "--level", "1")
    assert "| retained heap |" in out and "speed-up from the retained heap" in out


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "reference" / "wct-vgg19").is_dir(), reason="no WCT teacher")
@NEEDS_SHARED
def test_stage_references(tmp_path: Path) -> None:
    """Each stage against the release at level 1: references, kept filters, stage 3 from both starts, ceilings."""
    out = run_benchmark("stage_references.py", "--levels", "1", "--decoder-steps", "2", "--ceiling-batches", "1",
                        "--out", tmp_path)
    assert "| 1 | 28.27 | 45.26 | 30.09 |" in out  # teacher, SE1/SD1, D_teacher(Q·SE1) on the held-out photos
    assert "| 1 | encoder | conv11 | 24 | 24 | yes |" in out  # our L1 slimming keeps e1_base's filters
    ceiling = float(out.split("| released SE1 | ")[1].split(" |")[0])
    assert ceiling > 45.26  # SE1's features allow more than SD1 reads from them (46.60 with the default 4 batches)


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "reference" / "wct-vgg19").is_dir(), reason="no WCT teacher")
@NEEDS_SHARED
def test_time_to_quality(tmp_path: Path) -> None:
    out = run_benchmark("time_to_quality.py", "--levels", "2", "--budgets", "2", "4", "--anomaly-steps", "2", "4",
                        "--anomaly-decoder-steps", "2", "--anomaly-lr", "1e-3", "--out", tmp_path / "runs",
                        "--docs", tmp_path / "docs")
    assert "| 2 | 2 + 10 | 48 |" in out and "| 2 | 4 + 20 | 96 |" in out and "| 4 @ lr 0.001 |" in out
    assert (tmp_path / "docs" / "images" / "time_to_quality.png").stat().st_size > 0


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "reference" / "wct-vgg19").is_dir(), reason="no WCT teacher")
@NEEDS_SHARED
def test_stage_throughput(tmp_path: Path) -> None:
    out = run_benchmark("stage_throughput.py", "--levels", "1", "--crop", "32", "--repeats", "1", "--rounds", "1",
                        "--steps", "1", "--out", tmp_path)
    assert "| teacher targets |" in out and "| perceptual pass |" in out and "| fp32 |" in out


@pytest.mark.skipif(not (REPO_ROOT.parent / "shared" / "reference" / "wct-vgg19").is_dir(), reason="no WCT teacher")
@NEEDS_SHARED
def test_ship_student_records_both_protocols_and_refuses_a_wrong_recipe(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny_l1.yaml"
    recipe.write_text(f"name: tiny_l1\nextends: {REPO_ROOT / 'recipes' / 'wct_vgg19_l1_cpu.yaml'}\n"
                      "data: {resize: 64, crop: 48}\nstages:\n  distill: {steps: 2}\n  decoder: {steps: 2}\n"
                      "output: {eval_every: 0, checkpoint_every: 0}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO_ROOT)}
    cli = [str(Path(sys.executable).parent / "cdcompress"), "distill", "--recipe", str(recipe), "--out", str(tmp_path / "run")]
    assert subprocess.run(cli, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600).returncode == 0
    out = run_benchmark("ship_student.py", tmp_path / "run", "--recipe", recipe, "--out", tmp_path / "model")
    record = json.loads((tmp_path / "model" / "reproduction.json").read_text())
    assert record["recipe"] == str(recipe) and record["released_se1_sd1"]["heldout_psnr"] == pytest.approx(45.26, abs=0.01)
    assert f"| {record['heldout_psnr']:.2f} |" in out
    wrong = subprocess.run([sys.executable, str(BENCH / "ship_student.py"), str(tmp_path / "run"), "--recipe",
                            "wct_vgg19_l1_cpu", "--out", str(tmp_path / "other")], capture_output=True, text=True,
                           env=env, cwd=REPO_ROOT, timeout=600)
    assert wrong.returncode != 0 and "differs from recipe wct_vgg19_l1_cpu" in wrong.stderr
    assert not (tmp_path / "other").exists()
