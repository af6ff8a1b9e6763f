"""Teacher vs student stylization speed on every deployment runtime, measured in one interleaved run.

A speed claim is only comparable when both models ran on the same machine state, so every
(runtime, model) pair stylizes the same image in each round, round after round, and medians are
reported. Runtimes: ``eager`` (PyTorch on the CPU), ``bundle`` (the exported fp32 ONNX graphs on
onnxruntime), ``int8`` (the quantized bundle, levels past its quality gate in float32), ``bf16``
(PyTorch with bfloat16 networks), and on a GPU ``cuda`` / ``cuda-fp16`` (device-resident cascade).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CDCompressError
from ..models.format import CDModel
from .measure import interleaved

#: Runtime name -> what it is, for the table and ``--help``.
RUNTIMES: dict[str, str] = {
    "eager": "PyTorch, CPU, fp32",
    "bundle": "exported ONNX bundle on onnxruntime, fp32",
    "int8": "INT8 ONNX bundle on onnxruntime (levels past the quality gate stay fp32)",
    "bf16": "PyTorch, CPU, bfloat16 networks",
    "cuda": "PyTorch, CUDA, fp32, device-resident",
    "cuda-fp16": "PyTorch, CUDA, fp16 networks, device-resident",
}
DEFAULT_RUNTIMES = ("eager", "bundle")


@dataclass
class RuntimeTiming:
    """Median seconds per stylization of each model on one runtime (``None``: the runtime was unavailable)."""

    runtime: str
    seconds: dict[str, float | None] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def parse_runtimes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise CDCompressError(f"--runtimes {text!r}: unknown {unknown or 'empty'}; choose from {', '.join(RUNTIMES)}")
    if any(n.startswith("cuda") for n in names) and not torch.cuda.is_available():
        raise CDCompressError("--runtimes cuda/cuda-fp16 need a CUDA GPU, and PyTorch sees none here; drop them")
    return names


def _backend(runtime: str, model: CDModel, levels: Sequence[int], scratch: Path, name: str,
             threads: int) -> tuple[Any, str]:
    """The stylization backend of ``model`` on ``runtime`` (exporting/quantizing into ``scratch``), and a note."""
    from ..stylization.backend import TorchBackend

    if runtime in ("eager", "bf16"):
        return TorchBackend(model, precision="bf16" if runtime == "bf16" else "fp32"), ""
    if runtime.startswith("cuda"):
        return TorchBackend(model, device="cuda", precision="fp16" if runtime == "cuda-fp16" else "fp32"), ""
    from ..export import OnnxBackend, export_bundle

    bundle = scratch / f"{name}-fp32"
    if not bundle.exists():
        export_bundle(model, bundle, "onnx-dynamic", sorted(levels), echo=lambda _line: None, progress=False)
    if runtime == "bundle":
        return OnnxBackend(bundle, threads=threads), ""
    from ..export.int8 import quantize_bundle
    from ..export.int8_record import trained_ranges

    ranges = trained_ranges(model, levels)  # a quantization-aware model: the ranges it trained with
    result = quantize_bundle(bundle, scratch / f"{name}-int8", echo=lambda _line: None, ranges=ranges)
    levels = result.manifest["int8_levels"]
    how = "trained" if ranges else "calibrated"
    return OnnxBackend(result.path, threads=threads), f"{name}: int8 levels {','.join(map(str, levels)) or 'none'} ({how} ranges)"


def compare_runtimes(models: dict[str, CDModel], levels: Sequence[int], size: int = 1024, *,
                     runtimes: Sequence[str] = DEFAULT_RUNTIMES, repeats: int = 3, threads: int = 2,
                     progress: Callable[[str], None] | None = None) -> list[RuntimeTiming]:
    """Untiled ``levels`` WCT of a random ``size``² image (256² style) by each model on each runtime.

    One warm-up each, then ``repeats`` rounds in which every (runtime, model) runs once; medians.
    A model that a runtime cannot take (an INT8 gate refusing every level) is reported as ``None``."""
    from ..export.errors import ExportError
    from ..stylization import stylize

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, size, size, generator=generator), torch.rand(1, 3, 256, 256, generator=generator)
    rows = {r: RuntimeTiming(r) for r in runtimes}
    runners: dict[tuple[str, str], Callable[[], object]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="cdcompress-runtimes-") as scratch:
            for runtime in runtimes:
                notes = []
                for name, model in models.items():
                    if progress:
                        progress(f"preparing {name} on {runtime}")
                    try:
                        backend, note = _backend(runtime, model, levels, Path(scratch), name, threads)
                    except ExportError as exc:
                        rows[runtime].seconds[name] = None
                        notes.append(f"{name}: {exc}")
                        continue
                    notes += [note] if note else []
                    runners[runtime, name] = lambda b=backend: stylize(b, content, style, levels=list(levels), tile=0)
                rows[runtime].note = "; ".join(notes)
            times = interleaved(runners, repeats, progress)
    finally:
        torch.set_num_threads(previous)
    for (runtime, name), seconds in times.items():
        rows[runtime].seconds[name] = statistics.median(seconds)
    return [rows[r] for r in runtimes]


def format_runtime_table(rows: list[RuntimeTiming], size: int, levels: Sequence[int]) -> str:
    """Markdown: seconds per model and runtime, teacher/student on each, and the student against its eager run."""
    eager = next((r.seconds.get("student") for r in rows if r.runtime == "eager"), None)
    head = ["runtime", "teacher s", "student s", "teacher / student", "student vs its eager"]
    lines = [f"WCT levels {','.join(map(str, levels))}, untiled, {size}x{size} content, 256x256 style "
             "(medians of interleaved rounds)", "", "| " + " | ".join(head) + " |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        t, s = row.seconds.get("teacher"), row.seconds.get("student")
        lines.append(f"| {row.runtime} ({RUNTIMES[row.runtime]}) | {_seconds(t)} | {_seconds(s)} | "
                     f"{f'**{t / s:.2f}x**' if t and s else '-'} | {f'{eager / s:.2f}x' if eager and s else '-'} |")
    notes = [f"- {row.runtime}: {row.note}" for row in rows if row.note]
    best_t = min((r.seconds["teacher"] for r in rows if r.seconds.get("teacher")), default=None)
    best_s = min((r.seconds["student"] for r in rows if r.seconds.get("student")), default=None)
    if best_t and best_s:
        notes.append(f"- fastest teacher / fastest student: **{best_t / best_s:.2f}x**")
    return "\n".join(lines + ([""] + notes if notes else []))


def _seconds(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "-"
