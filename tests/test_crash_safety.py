"""Crash safety of every output: SIGKILL a writer anywhere and the output is the complete old or new one.

The kill campaign forks a writer that rewrites one output in a loop, alternating two distinguishable contents,
kills it at a random instant and reads the output back with the project's own loader. The injection tests
kill the writer right after each step of the swap, against today's mechanism, the exchange path and the
rename-aside fallback, and against the legacy one (rmtree, then rename), which loses the model.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cdcompress.core import atomic
from cdcompress.core.atomic import recover, save_torch, staged_directory, staged_file, write_json
from cdcompress.models import CDModel, convert_cd_release, load, save, student_architecture

CTX = multiprocessing.get_context("fork")
SEED = 20261202
CD16X = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cd16x"
Write = Callable[[Path, int], None]  # writes content 0 or 1 to the output
Check = Callable[[Path], int]  # loads the output and says which content it holds; raises if neither


# ----------------------------------------------------------------------------- today's mechanism before this change


@contextmanager
def legacy_staged_directory(path: Path) -> Iterator[Path]:
    """The mechanism this module replaced: delete the old output, then rename the new one in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- contents and checkers


def tiny_model(seed: int) -> CDModel:
    torch.manual_seed(seed)
    return student_architecture(0.125, levels=(1,))


def same_model(a: CDModel, b: CDModel) -> bool:
    """Every part present in both with bit-identical tensors."""
    tables = [(a.encoders, b.encoders), (a.decoders, b.decoders), (a.branches, b.branches)]
    for left, right in tables:
        if left.keys() != right.keys():
            return False
        for level in left:
            x, y = left[level].state_dict(), right[level].state_dict()
            if x.keys() != y.keys() or not all(x[k].shape == y[k].shape and torch.equal(x[k], y[k]) for k in x):
                return False
    return True


def model_checker(references: list[CDModel]) -> Check:
    def check(path: Path) -> int:
        loaded = load(path)
        matches = [i for i, ref in enumerate(references) if same_model(loaded, ref)]
        if len(matches) != 1:
            raise AssertionError(f"{path} holds neither the old nor the new model")
        return matches[0]
    return check


def hidden_siblings(path: Path) -> list[Path]:
    return [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.cdc-")]


# ----------------------------------------------------------------------------- the kill campaign


@dataclass
class Tally:
    """What one kind of output went through."""

    kills: int = 0
    checked: int = 0
    mid_write: int = 0  # kills that left the writer's hidden sibling behind: it was inside a write
    seen: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Timing:
    """When to kill: once ``writes`` writes completed (one drawn) and, if ``staged`` names a file, once the
    writer's staging folder holds it; then after ``span`` (drawn) times ``unit`` seconds (default: one write's)."""

    writes: tuple[int, ...] = (0, 1)
    span: tuple[float, float] = (0.0, 1.0)
    staged: str = ""
    unit: float | None = None


ANYWHERE = Timing()
#: Long writes (exports): the last file is staged, so the swap is milliseconds away.
NEAR_THE_SWAP = Timing((0,), (0.0, 1.0), staged="manifest.json", unit=0.015)


def _write_forever(write: Write, out: Path, progress: Any) -> None:
    """Write both contents in turn; ``progress`` holds the writes completed and the last one's seconds."""
    torch.set_num_threads(1)
    for i in range(1, 1 << 30):
        start = time.perf_counter()
        write(out, i % 2)
        progress[1] = time.perf_counter() - start
        progress[0] = i


def _write_seconds(write: Write, out: Path) -> float:
    """Seconds one warm write takes here (the first write pays for imports); content 0 is left in place."""
    times = []
    for i in (1, 0):
        start = time.perf_counter()
        write(out, i)
        times.append(time.perf_counter() - start)
    return min(times)


def _kill_one(write: Write, out: Path, timing: Timing, seconds: float, rng: random.Random) -> tuple[int, int | None]:
    """Fork a writer, SIGKILL it at a ``timing`` paced by its own writes; its PID and exit code if it died first."""
    progress = CTX.RawArray("d", [0.0, seconds])
    child = CTX.Process(target=_write_forever, args=(write, out, progress), daemon=True)
    child.start()
    wait_for = rng.choice(timing.writes)
    while progress[0] < wait_for and child.exitcode is None:
        time.sleep(0.0005)
    while timing.staged and child.exitcode is None and not _staged(out, child.pid, timing.staged):
        time.sleep(0.002)
    time.sleep(rng.uniform(*timing.span) * (timing.unit or progress[1]))
    died = child.exitcode
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    return child.pid, died


def _staged(out: Path, pid: int, name: str) -> bool:
    """Whether writer ``pid``'s staging folder for ``out`` holds ``name``."""
    return any((p / name).exists() for p in hidden_siblings(out) if f"-stage-{pid}-" in p.name)


def kill_campaign(write: Write, check: Check, out: Path, kills: int, timing: Timing, rng: random.Random) -> Tally:
    """``kills`` times: fork a writer looping over both contents, SIGKILL it at a random instant of a write and
    check the output. Ends with one undisturbed write, which must leave no crashed write's siblings."""
    tally = Tally()
    if timing.unit is None:
        seconds = _write_seconds(write, out)
    else:
        write(out, 0)
        seconds = timing.unit
    for _ in range(kills):
        pid, died = _kill_one(write, out, timing, seconds, rng)
        if died is not None:
            tally.failures.append(f"the writer exited by itself with code {died}")
        tally.kills += 1
        tally.mid_write += any(f"-{pid}-" in p.name for p in hidden_siblings(out))
        try:
            tally.seen[check(out)] += 1
            tally.checked += 1
        except Exception as exc:  # missing, unloadable or a mix: the loss this test exists to catch
            tally.failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    write(out, 1)
    if hidden_siblings(out):
        tally.failures.append(f"crashed writes' leftovers not cleaned: {hidden_siblings(out)}")
    return tally


class _CheckpointTask:
    """One conv layer: a checkpoint of ~600 KB, so a kill often lands inside ``torch.save``."""

    name = "crash"

    def __init__(self) -> None:
        self.layer = nn.Conv2d(128, 128, 3)

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"layer": self.layer}

    def set_train(self, mode: bool) -> None:
        self.layer.train(mode)

    def losses(self, batch: Any) -> dict[str, torch.Tensor]:
        return {"total": self.layer(batch.input).mean()}

    def samples(self, batch: Any) -> list[torch.Tensor]:
        return [batch.input]


def model_campaign(tmp: Path, kills: int, rng: random.Random) -> Tally:
    references = [tiny_model(0), tiny_model(1)]
    return kill_campaign(lambda out, i: save(references[i], out, overwrite=True), model_checker(references),
                         tmp / "model", kills, ANYWHERE, rng)


def convert_campaign(tmp: Path, kills: int, rng: random.Random) -> Tally:
    """``cdcompress convert --force`` over one output, alternating the release's student and base variants."""
    from cdcompress.cli.main import main

    variants = ["student", "base"]
    references = [convert_cd_release(CD16X, v, (1,)) for v in variants]

    def write(out: Path, i: int) -> None:
        result = CliRunner().invoke(main, ["convert", "--from", "cd-release", str(CD16X), "--out", str(out),
                                           "--variant", variants[i], "--levels", "1", "--force"])
        if result.exit_code != 0:
            raise RuntimeError(result.output)

    return kill_campaign(write, model_checker(references), tmp / "converted", kills, ANYWHERE, rng)


def checkpoint_campaign(tmp: Path, kills: int, rng: random.Random) -> Tally:
    """``Trainer.save_checkpoint`` of one step, alternating two weight sets; read back as a resume reads it."""
    from cdcompress.distill import TrainConfig, Trainer

    task = _CheckpointTask()
    trainer = Trainer(task, [], TrainConfig(steps=1), tmp / "run")
    weights = [torch.full_like(task.layer.weight, float(i + 1)) for i in range(2)]

    def write(out: Path, i: int) -> None:
        with torch.no_grad():
            task.layer.weight.copy_(weights[i])
        assert trainer.save_checkpoint(1) == out

    def check(out: Path) -> int:
        state = torch.load(out, map_location="cpu", weights_only=True)
        assert {"step", "modules", "optimizer", "scheduler", "scaler", "rng"} <= state.keys()
        found = state["modules"]["layer"]["weight"]
        return next(i for i, w in enumerate(weights) if torch.equal(found, w))

    return kill_campaign(write, check, tmp / "run" / "checkpoints" / "crash_step0000001.pt", kills, ANYWHERE, rng)


def bundle_campaign(tmp: Path, kills: int, rng: random.Random) -> Tally:
    """``export_bundle --force`` of two level-1 models; read back with the runtime (manifest, checksums, graphs)."""
    from cdcompress.export import OnnxBackend, export_bundle, load_profile
    from cdcompress.export.bundle import parameters_sha256

    models = [tiny_model(0), tiny_model(1)]
    profile = load_profile("onnx-dynamic")
    identities = [parameters_sha256(m.encoder(1)) for m in models]

    def write(out: Path, i: int) -> None:
        export_bundle(models[i], out, profile, [1], overwrite=True, echo=lambda _: None, progress=False)

    def check(out: Path) -> int:
        backend = OnnxBackend(out)
        image = torch.rand(1, 3, 16, 16)
        assert backend.decode(1, backend.encode(1, image)).shape == image.shape
        return identities.index(backend.manifest["parts"]["enc1"]["parameters_sha256"])

    return kill_campaign(write, check, tmp / "bundle", kills, NEAR_THE_SWAP, rng)


def test_sigkill_campaign_never_loses_an_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(SEED)
    plan: dict[str, tuple[Callable[[Path, int, random.Random], Tally], int]] = {
        "model save (exchange)": (model_campaign, 60),
        "checkpoint": (checkpoint_campaign, 80),
        "bundle export": (bundle_campaign, 6),
        "model save (rename-aside fallback)": (model_campaign, 54),
    }
    if (CD16X / "se1.pth").is_file():
        plan["convert"] = (convert_campaign, 60)
    tallies: dict[str, Tally] = {}
    start = time.perf_counter()
    for name, (campaign, kills) in plan.items():
        folder = tmp_path / str(len(tallies))
        folder.mkdir()
        with monkeypatch.context() as patch:
            if "fallback" in name:
                patch.setattr(atomic, "_exchange", lambda a, b: False)
            began = time.perf_counter()
            tallies[name] = campaign(folder, kills, rng)
            tallies[name].seconds = time.perf_counter() - began
    seconds = time.perf_counter() - start
    for name, t in tallies.items():
        print(f"\n{name}: {t.kills} kills, {t.checked} outputs checked ({t.mid_write} mid-write), "
              f"old/new {t.seen[0]}/{t.seen[1]}, {len(t.failures)} failures {t.failures[:3]}, {t.seconds:.1f} s")
    total = sum(t.kills for t in tallies.values())
    failures = sum(len(t.failures) for t in tallies.values())
    print(f"\ntotal: {total} kills, {sum(t.checked for t in tallies.values())} checked, {failures} failures, "
          f"{seconds:.1f} s" + ("" if "convert" in plan else " (convert skipped: ../shared/reference/cd16x absent)"))
    assert failures == 0
    assert total >= sum(k for _, k in plan.values()) >= 200
    assert sum(t.mid_write for t in tallies.values()) >= total // 4, "too few kills landed inside a write"


# ----------------------------------------------------------------------------- a crash after every step of the swap


def _write_then_crash_after(step: int, write: Callable[[], None]) -> None:
    """Run ``write``, SIGKILLing this process right after its ``step``-th rename, replace, exchange or rmtree."""
    torch.set_num_threads(1)
    done = [0]

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            done[0] += 1
            if done[0] == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return run

    os.rename, os.replace, shutil.rmtree = counted(os.rename), counted(os.replace), counted(shutil.rmtree)
    atomic._exchange = counted(atomic._exchange)
    write()


def crash_every_step(out: Path, references: list[CDModel]) -> tuple[Tally, int]:
    """Overwrite model 0 with model 1, crashing after step 1, 2, ... until a write completes; check each crash.

    Returns the tally and how many crashes found the output missing before the loader restored it."""
    tally, restored, check = Tally(), 0, model_checker(references)
    for step in range(1, 20):
        save(references[0], out, overwrite=True)
        child = CTX.Process(target=_write_then_crash_after,
                            args=(step, lambda: save(references[1], out, overwrite=True)))
        child.start()
        child.join()
        if child.exitcode != -signal.SIGKILL:
            assert child.exitcode == 0 and check(out) == 1, f"the uninterrupted write failed ({child.exitcode})"
            return tally, restored
        tally.kills += 1
        restored += not out.exists() and any(".cdc-aside-" in p.name for p in hidden_siblings(out))
        try:
            tally.seen[check(out)] += 1
        except Exception as exc:
            tally.failures.append(f"crash after step {step}: {type(exc).__name__}: {str(exc)[:200]}")
    raise AssertionError("the write never completed")


def test_crash_after_each_step_loses_the_model_only_with_the_legacy_mechanism(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    references = [tiny_model(0), tiny_model(1)]
    probe = [tmp_path / "a", tmp_path / "b"]
    for p in probe:
        p.mkdir()
    exchange = atomic._exchange(*probe)

    monkeypatch.setattr("cdcompress.models.format.staged_directory", legacy_staged_directory)
    legacy, _ = crash_every_step(tmp_path / "legacy", references)
    # killed after rmtree, before the rename: no model at all (the other crash points leave old or new)
    assert len(legacy.failures) == 1 and "not a cdcompress model directory" in legacy.failures[0], legacy
    monkeypatch.undo()

    if exchange:
        swapped, restored = crash_every_step(tmp_path / "exchange", references)
        assert not swapped.failures and swapped.kills >= 2 and set(swapped.seen) == {0, 1}, swapped
        assert restored == 0  # the output never went missing
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    aside, restored = crash_every_step(tmp_path / "fallback", references)
    assert not aside.failures and aside.kills >= 3 and set(aside.seen) == {0, 1}, aside
    assert restored == 1  # killed between the two renames: the loader put the old model back
    if not exchange:
        pytest.skip("this file system cannot exchange (renameat2); only the fallback was tested")


# ----------------------------------------------------------------------------- durability, leftovers, concurrency


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_files_and_directories_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for overwrite in (False, True):  # a new output, then the replacing path
        synced.clear()
        path = save(tiny_model(int(overwrite)), tmp_path / "m", overwrite=overwrite)
        wanted = {_inode(p) for p in [path, *path.iterdir()]} | {_inode(tmp_path)}
        assert wanted <= synced, f"not fsynced: {wanted - synced}"
    for name, writer in (("r.json", lambda p: write_json(p, {"a": 1})), ("c.pt", lambda p: save_torch({"a": 1}, p))):
        synced.clear()
        writer(tmp_path / name)
        assert {_inode(tmp_path / name), _inode(tmp_path)} <= synced, name


def _dead_pid() -> int:
    child = CTX.Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    return child.pid


def test_next_write_removes_crashed_writes_leftovers_only(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    path = save(tiny_model(0), tmp_path / "m")
    stale = [tmp_path / f".m.cdc-{kind}-{dead}-0a1b{i}" for i, kind in enumerate(("stage", "aside", "tmp"))]
    kept = [tmp_path / f".m.cdc-stage-{alive}-0c1d", tmp_path / ".m.other", tmp_path / f".mm.cdc-stage-{dead}-0e"]
    for p in stale[:2] + kept[:1]:
        (p / "sub").mkdir(parents=True)
    for p in stale[2:] + kept[1:]:
        p.write_text("x")
    save(tiny_model(1), path, overwrite=True)
    assert sorted(tmp_path.iterdir()) == sorted([path, *kept])

    report = tmp_path / "r.json"
    leftover = tmp_path / f".r.json.cdc-tmp-{dead}-0f.json"
    leftover.write_text("{")
    write_json(report, [1])
    assert not leftover.exists() and json.loads(report.read_text()) == [1]


def test_only_a_crashed_writers_aside_is_restored(tmp_path: Path) -> None:
    path = save(tiny_model(0), tmp_path / "m")
    running = tmp_path / f".m.cdc-aside-{os.getpid()}-01"
    path.rename(running)
    recover(path, wait_s=0.05)  # a live writer is mid-swap: wait for it, never take its aside
    assert not path.exists() and running.is_dir()
    crashed = tmp_path / f".m.cdc-aside-{_dead_pid()}-02"
    running.rename(crashed)
    assert model_checker([tiny_model(0)])(path) == 0  # load() restores it
    assert not crashed.exists()


def test_concurrent_file_writers_do_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        start.wait()
        try:
            for i in range(40):
                write_json(path, {"writer": n, "i": i, "pad": "x" * 200_000})
        except BaseException as exc:  # a shared temp name: another writer renamed or truncated ours
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(json.loads(path.read_text())["pad"]) == 200_000
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_results_have_plain_permissions_and_images_keep_their_format(tmp_path: Path) -> None:
    from PIL import Image

    from cdcompress.data.images import save_image

    umask = os.umask(0o027)
    try:
        with staged_directory(tmp_path / "d") as staging:
            (staging / "f").write_text("x")
        write_json(tmp_path / "r.json", {})
        save_image(torch.rand(3, 8, 8), tmp_path / "i.png")
    finally:
        os.umask(umask)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750  # as mkdir gives, with this umask
    assert (tmp_path / "d" / "f").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640  # as open() gives
    assert Image.open(tmp_path / "i.png").format == "PNG"


def test_failed_staged_file_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), staged_file(path) as staging:
        staging.write_text("{half")
        raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["r.json"]
