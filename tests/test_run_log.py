"""A run's logs: metrics.jsonl, and TensorBoard event files beside it holding the same numbers when tensorboard is
installed (read back here with TensorBoard's own reader), purged on resume, absent without tensorboard."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdcompress.core import atomic
from cdcompress.data.batches import Batch
from cdcompress.distill import TrainConfig, Trainer

DATA = [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(4)]
HELD_OUT = [torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(9))]
TERMS = ("total", "pixel", "l1", "lr")


class _Interrupted(Exception):
    pass


class _Conv:
    """A real one-conv reconstruction task with three loss terms, a held-out prediction and a two-column grid;
    ``stop_at``: the loss call that raises, as a killed run would stop."""

    name = "conv"

    def __init__(self, stop_at: int = 0) -> None:
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.calls, self.stop_at = 0, stop_at

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"conv": self.conv}

    def set_train(self, mode: bool) -> None:
        self.conv.train(mode)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.calls == self.stop_at:
            raise _Interrupted
        out = self.conv(batch.input)
        pixel, l1 = F.mse_loss(out, batch.target), F.l1_loss(out, batch.target)
        return {"total": pixel + 0.1 * l1, "pixel": pixel, "l1": l1}

    def samples(self, batch: Batch) -> list[torch.Tensor]:
        return [batch.input, self.conv(batch.input)]


def _train(run_dir: Path, steps: int, stop_at: int = 0, resume: bool = False) -> None:
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, lr=1e-2, log_every=1, sample_every=3, eval_every=2, checkpoint_every=2)
    Trainer(_Conv(stop_at), DATA, config, run_dir, held_out=HELD_OUT).fit(resume=resume)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _events(folder: Path) -> object:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})  # 0: keep every point
    events.Reload()
    return events


def _assert_same_numbers(events: object, records: list[dict], stage: str) -> None:
    """Every number of metrics.jsonl is the scalar <stage>/<field> at its step (float32 in the event file)."""
    for field in (*TERMS, "heldout/psnr"):
        expected = [(r["step"], r[field]) for r in records if r["stage"] == stage and field in r]
        logged = [(e.step, e.value) for e in events.Scalars(f"{stage}/{field}")]
        assert [s for s, _ in logged] == [s for s, _ in expected], field
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), field


def test_event_files_hold_the_metrics_and_the_sample_grids(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    _train(tmp_path, steps=6)
    events = _events(tmp_path / "tensorboard" / "conv")
    records = _records(tmp_path)
    _assert_same_numbers(events, records, "conv")
    assert [e.step for e in events.Scalars("conv/heldout/psnr")] == [0, 2, 4, 6]
    assert "conv/time" not in events.Tags()["scalars"]
    grids = events.Images("conv/samples")
    assert [(g.step, g.width, g.height) for g in grids] == [(3, 2 * 16, 2 * 16), (6, 2 * 16, 2 * 16)]


def test_a_resumed_stage_shows_each_step_once(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with pytest.raises(_Interrupted):
        _train(tmp_path, steps=8, stop_at=6)  # steps 1-5 logged, the last checkpoint at 4
    _wait_for_the_next_second()
    _train(tmp_path, steps=8, resume=True)
    events = _events(tmp_path / "tensorboard" / "conv")
    records = _records(tmp_path)
    assert [r["step"] for r in records if "total" in r] == list(range(1, 9))
    _assert_same_numbers(events, records, "conv")  # the interrupted run's step 5 is hidden: the resumed one shows
    assert [e.step for e in events.Images("conv/samples")] == [3, 6]


def test_without_tensorboard_training_logs_metrics_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it now fails, as when not installed
    with caplog.at_level(logging.DEBUG, logger="cdcompress.distill.run_log"):
        _train(tmp_path, steps=3)
    assert [r["step"] for r in _records(tmp_path) if "total" in r] == [1, 2, 3]
    assert not (tmp_path / "tensorboard").exists()
    notes = [r for r in caplog.records if r.name == "cdcompress.distill.run_log"]
    assert len(notes) == 1 and notes[0].levelno == logging.DEBUG and "cdcompress[tensorboard]" in notes[0].getMessage()


def test_trimming_on_resume_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while metrics.jsonl is rewritten leaves the whole old file, not an emptied or half one."""
    with pytest.raises(_Interrupted):
        _train(tmp_path, steps=8, stop_at=6)
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        _train(tmp_path, steps=8, resume=True)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging file left
    _train(tmp_path, steps=8, resume=True)
    assert [r["step"] for r in _records(tmp_path) if "total" in r] == list(range(1, 9))


def test_a_torn_last_line_does_not_stop_a_resume(tmp_path: Path) -> None:
    """A kill mid-append leaves half a JSON line at the end of metrics.jsonl: resuming drops it and goes on."""
    with pytest.raises(_Interrupted):
        _train(tmp_path, steps=8, stop_at=6)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "tiny", "step": 7, "to')
    _train(tmp_path, steps=8, resume=True)
    assert [r["step"] for r in _records(tmp_path) if "total" in r] == list(range(1, 9))


def test_a_recipe_run_directory_is_a_tensorboard_logdir(tmp_path: Path) -> None:
    """What ``tensorboard --logdir RUN_DIR`` finds: one run per stage, with the stage's curves."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from test_recipes import VALID

    from cdcompress.distill.recipe import load_recipe
    from cdcompress.distill.run import run_recipe

    path = tmp_path / "tiny.yaml"
    path.write_text(VALID)
    out = tmp_path / "run"
    run_recipe(load_recipe(path, overrides=["output.eval_every=2"]), out)
    logdir = EventMultiplexer(size_guidance={"scalars": 0, "images": 0}).AddRunsFromDirectory(str(out))
    logdir.Reload()
    stages = ("collaborator_L1", "distill_L1", "decoder_L1")
    assert sorted(logdir.Runs()) == sorted(f"tensorboard/{stage}" for stage in stages)
    records = _records(out)
    for stage in stages:
        events = logdir.GetAccumulator(f"tensorboard/{stage}")
        assert [e.value for e in events.Scalars(f"{stage}/total")] == pytest.approx(
            [r["total"] for r in records if r["stage"] == stage and "total" in r], rel=1e-6)
        assert [e.step for e in events.Scalars(f"{stage}/heldout/psnr")] == [
            r["step"] for r in records if r["stage"] == stage and "heldout/psnr" in r]
        assert [e.step for e in events.Images(f"{stage}/samples")] == [4]


def _wait_for_the_next_second() -> None:
    """Event files are read in name order and named by the second they were opened: a resumed stage's file must
    sort after the interrupted one's for its purge to apply to it (a real restart takes longer than this)."""
    time.sleep(1 - time.time() % 1 + 0.01)
