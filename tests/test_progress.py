"""Progress without a terminal: plain, bounded lines instead of carriage-return redraws (CI logs, nohup, schedulers)."""

from __future__ import annotations

import io
import re

import pytest
import torch

from cdcompress.core.errors import CDCompressError
from cdcompress.core.progress import ENV_INTERVAL, Progress, line_interval, progress_iter
from cdcompress.distill.trainer import TrainConfig, Trainer


class _Fit:
    """A one-conv task: enough to drive the trainer's loop and its progress."""

    name = "tiny"

    def __init__(self) -> None:
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"conv": self.conv}

    def losses(self, batch: object) -> dict[str, torch.Tensor]:
        image = batch.input  # type: ignore[attr-defined]
        loss = torch.nn.functional.mse_loss(self.conv(image), image)
        return {"pixel": loss, "total": loss}

    def samples(self, batch: object) -> list[torch.Tensor]:
        return [batch.input]  # type: ignore[attr-defined]

    def set_train(self, mode: bool) -> None:
        self.conv.train(mode)


def _train(steps: int) -> None:
    images = [torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(steps)]
    Trainer(_Fit(), images, TrainConfig(steps=steps, lr=1e-3, log_every=1)).fit()


def _progress_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("stage tiny")]


def test_training_with_a_captured_stderr_writes_no_redraws(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal: no carriage return, and at the default interval (30 s) a short run says one final line with
    the stage, the step count, the rate and the loss."""
    monkeypatch.delenv(ENV_INTERVAL, raising=False)
    _train(12)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b[" not in err
    lines = _progress_lines(err)
    assert len(lines) == 1, err
    assert re.fullmatch(r"stage tiny: step 12/12 \(100%\), [0-9.e+]+ step/s, loss [0-9.e+-]+, done in 0:00:\d\d", lines[0])


def test_the_interval_bounds_the_lines(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``$CDCOMPRESS_PROGRESS_SECONDS=0``: a line per step at most (never a repeated final line); each one says where
    the stage is and how fast it goes."""
    monkeypatch.setenv(ENV_INTERVAL, "0")
    _train(6)
    lines = _progress_lines(capsys.readouterr().err)
    assert [int(re.search(r"step (\d+)/6", line).group(1)) for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all("step/s" in line for line in lines) and all("loss" in line for line in lines[1:])
    assert "ETA" in lines[2] and "done in" in lines[-1]


def test_a_terminal_still_gets_a_bar() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(3, "stage tiny", "step", stream=stream) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()


def test_disabled_progress_writes_nothing_and_iterables_close_their_line() -> None:
    quiet = io.StringIO()
    assert list(progress_iter(range(3), "export", "graph", enabled=False, stream=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""
    plain = io.StringIO()
    assert list(progress_iter(("enc1", "dec1"), "export", "graph", stream=plain)) == ["enc1", "dec1"]
    assert plain.getvalue().startswith("export: graph 2/2 (100%)") and plain.getvalue().count("\n") == 1


def test_byte_counts_are_scaled(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(5_000_000, "vgg19.pth", "B", unit_scale=True) as bar:
        bar.update(1_250_000)
    assert capsys.readouterr().err.startswith("vgg19.pth: 1.25 MB/5 MB (25%), ")


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_interval_is_one_line(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_INTERVAL, value)
    with pytest.raises(CDCompressError, match=f"{ENV_INTERVAL}=.* must be a number of seconds >= 0"):
        line_interval()

