"""Multi-process training and crash safety on real runs of a tiny recipe (subprocesses, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from cdcompress import load

RECIPE = textwrap.dedent(
    """
    name: tiny_reliability
    levels: [2]
    teacher: {{source: builtin, path: vgg19, pretrained: none}}
    collaborator: {{source: train}}
    student: {{width: 0.25}}
    objective: {{lambda_p: 0.1}}
    data: {{train: [skimage], eval: [skimage-heldout], resize: 40, crop: 32, eval_size: 48}}
    stages:
      collaborator: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
      distill: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
      decoder: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
    output: {{checkpoint_every: 2, log_every: 1}}
    """
)


def write_recipe(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(steps=steps))
    return path


def cli(*args: str | Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cdcompress", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def student_state(run_dir: Path) -> dict[str, torch.Tensor]:
    model = load(run_dir / "student")
    state = {f"encoder.{k}": v for k, v in model.encoders[2].state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in model.decoders[2].state_dict().items()})
    return state


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=4)
    finish(cli("distill", "--recipe", recipe, "--out", tmp_path / "single"))
    finish(cli("distill", "--recipe", recipe, "--out", tmp_path / "ddp", "--nproc", "2"))
    single, ddp = student_state(tmp_path / "single"), student_state(tmp_path / "ddp")
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, rtol=1e-3, atol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    assert (tmp_path / "ddp" / "report.md").is_file()
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 4, "only rank 0 may write metrics"


def test_sigkill_then_resume_is_bit_identical(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, steps=12)
    finish(cli("distill", "--recipe", recipe, "--out", tmp_path / "straight"))

    run = tmp_path / "killed"
    proc = cli("distill", "--recipe", recipe, "--out", run)
    deadline = time.time() + 600
    # Killed as soon as stage 2 has a checkpoint: older ones are deleted as training moves on, so waiting for a
    # particular step can miss it on a fast machine.
    while not list((run / "checkpoints").glob("distill_L2_step*.pt")) if (run / "checkpoints").is_dir() else True:
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "student").exists()
    finish(cli("distill", "--recipe", recipe, "--out", run, "--resume"))

    straight, resumed = student_state(tmp_path / "straight"), student_state(run)
    assert straight.keys() == resumed.keys()
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), f"{key} differs after SIGKILL + resume"

    # A truncated newest checkpoint is detected and the previous good one is used instead.
    newest = sorted((run / "checkpoints").glob("decoder_L2_step*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])
    out = finish(cli("distill", "--recipe", recipe, "--out", run, "--resume"))
    assert "unreadable" in out and "trying the previous one" in out
