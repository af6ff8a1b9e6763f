"""Teacher vs student cost of any encoder-decoder pair: parameters, MACs and *measured* latency.

"The pruned model is not faster" is the commonest complaint against pruning: MACs fall with width²
but latency need not. So the comparison times both pairs on the runtimes they deploy on (PyTorch
eager and the exported ONNX graphs on onnxruntime) in one process, interleaved round by round, so a
machine that slows down mid-run slows both models alike; medians are reported.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..models.format import CDModel
from ..models.pair import MODULE_FAMILY, rebuild
from ..surgery.modules import EncoderDecoderPair, count_parameters
from .measure import interleaved
from .static import count_macs


@dataclass
class PairCost:
    name: str
    encoder_parameters: int
    decoder_parameters: int
    macs: int
    seconds: dict[str, float] = field(default_factory=dict)  # runtime -> median seconds per image

    def as_dict(self) -> dict:
        return asdict(self)


def teacher_shapes(model: CDModel) -> CDModel:
    """The full-width pair a ``module``-family student was cut from (random weights: for timing only)."""
    record = dict(model.meta["architecture"])
    record["widths"] = None
    encoder, decoder = rebuild(record, "teacher architecture")
    return CDModel(family=MODULE_FAMILY, encoders={1: encoder.eval()}, decoders={1: decoder.eval()},
                   meta={"name": "teacher architecture (random weights)", "architecture": record})


def _torch_runner(model: CDModel) -> Callable[[torch.Tensor], object]:
    pair = EncoderDecoderPair(model.encoder(), model.decoder()).eval()

    def run(image: torch.Tensor) -> object:
        with torch.inference_mode():
            return pair(image)

    return run


def _onnx_runner(model: CDModel, scratch: Path, name: str, threads: int) -> Callable[[torch.Tensor], object]:
    from ..export.bundle import export_bundle
    from ..export.pair import PairRunner

    bundle = scratch / name
    export_bundle(model, bundle, "onnx-dynamic", echo=lambda _line: None, progress=False)
    return PairRunner(bundle, threads=threads)


def compare(teacher: CDModel, student: CDModel, size: tuple[int, int] = (512, 512), *, repeats: int = 5,
            threads: int = 2, onnx: bool = True) -> list[PairCost]:
    """Cost rows for teacher and student; latency medians over ``repeats`` interleaved rounds per runtime.

    PyTorch runs with ``threads`` threads for the measurement; the caller's setting is restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _compare(teacher, student, size, repeats, threads, onnx)
    finally:
        torch.set_num_threads(previous)


def _compare(teacher: CDModel, student: CDModel, size: tuple[int, int], repeats: int, threads: int,
             onnx: bool) -> list[PairCost]:
    models = {"teacher": teacher, "student": student}
    channels = student.image_channels
    shape = (1, channels, *size)
    rows = {name: PairCost(name, count_parameters(m.encoder()), count_parameters(m.decoder()),
                           count_macs(EncoderDecoderPair(m.encoder(), m.decoder()), shape)) for name, m in models.items()}
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="cdcompress-cost-") as scratch:
        runners: dict[str, dict[str, Callable[[torch.Tensor], object]]] = {
            name: {"torch": _torch_runner(m)} for name, m in models.items()}
        if onnx:
            for name, m in models.items():
                runners[name]["onnxruntime"] = _onnx_runner(m, Path(scratch), name, threads)
        times = interleaved({(name, runtime): (lambda run=run: run(image)) for name, by_runtime in runners.items()
                             for runtime, run in by_runtime.items()}, repeats)
    for (name, runtime), seconds in times.items():
        rows[name].seconds[runtime] = statistics.median(seconds)
    return [rows["teacher"], rows["student"]]


def format_pair_cost(rows: list[PairCost], size: tuple[int, int]) -> str:
    """Markdown table with student/teacher ratios (parameters, MACs) and speed-ups per runtime."""
    teacher, student = rows
    runtimes = list(teacher.seconds)
    head = ["model", "encoder params", "decoder params", f"GMACs @ {size[0]}x{size[1]}",
            *[f"{r} ms" for r in runtimes]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name, f"{row.encoder_parameters:,}", f"{row.decoder_parameters:,}", f"{row.macs / 1e9:.3f}",
                 *[f"{row.seconds[r] * 1e3:.1f}" for r in runtimes]]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = [f"{teacher.encoder_parameters / student.encoder_parameters:.2f}x",
              f"{teacher.decoder_parameters / student.decoder_parameters:.2f}x", f"{teacher.macs / student.macs:.2f}x",
              *[f"{teacher.seconds[r] / student.seconds[r]:.2f}x" for r in runtimes]]
    lines.append("| teacher / student | " + " | ".join(ratios) + " |")
    return "\n".join(lines)
