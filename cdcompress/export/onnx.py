"""ONNX export of one encoder or decoder, and the parity check that makes export trustworthy.

Graphs come from ``torch.onnx.export(dynamo=True)``: ``torch.export`` traces the module with symbolic
height/width, so one graph serves every image size without re-tracing. The exporter's built-in
optimiser (constant folding, dead-code removal) rewrites only to equivalent graphs; nothing else
touches the graph, and the saved file itself is what gets verified. Weights are stored inside the
``.onnx`` file (no external-data side files) so a graph is one self-contained artefact.

Parity is measured as ``max|onnx - torch| / max(1, max|torch|)``: the plain max abs difference for
outputs in [0, 1] (decoders), relative to the peak for encoder features, which the released
students produce in Caffe's 0..255 scale where float32 rounding alone is ~1e-7 of the value.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ExportError

ROLES = ("encoder", "decoder")
#: Graph input/output names per role; the bundle manifest repeats them for runtimes.
IO_NAMES = {"encoder": ("image", "features"), "decoder": ("features", "image")}
DYNAMIC_AXES = {2: "height", 3: "width"}


@dataclass(frozen=True)
class Part:
    """One graph of a bundle: the encoder or decoder of a level."""

    role: str
    level: int
    channels: int  # feature channels: the encoder's output, the decoder's input

    @property
    def name(self) -> str:
        return f"{'enc' if self.role == 'encoder' else 'dec'}{self.level}"

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    @property
    def stride(self) -> int:
        return 2 ** (self.level - 1)

    @property
    def io_names(self) -> tuple[str, str]:
        return IO_NAMES[self.role]

    def input_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """Input tensor shape for an image of ``image_hw`` (decoders see it at 1/stride)."""
        h, w = image_hw
        if self.role == "encoder":
            return (1, 3, h, w)
        return (1, self.channels, h // self.stride, w // self.stride)


def require_onnx() -> None:
    """Fail with one actionable line when the optional export dependencies are missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}; install with `pip install 'cdcompress[export]'`")


class _HalfCompute(nn.Module):
    """Runs ``inner`` in float16 behind float32 inputs/outputs: one graph interface for both precisions."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(inner).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(torch.float16)).to(torch.float32)


def graph_module(module: nn.Module, precision: str) -> nn.Module:
    """The module that is traced: a float32 CPU copy in eval mode, wrapped for fp16 if asked."""
    module = copy.deepcopy(module).float().cpu().eval()
    return _HalfCompute(module).eval() if precision == "fp16" else module


@contextlib.contextmanager
def reuse_torchlib_registry() -> Iterator[None]:
    """Build torch.onnx's operator registry once per bundle instead of once per graph.

    ``torch.onnx.export`` rebuilds its ``ONNXRegistry`` from torchlib on every call: 2-4 s on a 2-core
    CPU, about half the time of exporting one of these graphs. The registry depends only on its
    arguments (the opset) and is mutated only to add a custom translation table, which we never pass,
    so reusing it yields byte-identical graphs. It is private API: if it moves, this does nothing and
    export is merely slower.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        registry_cls = _registration.ONNXRegistry
        original = registry_cls.__dict__["from_torchlib"]
        build = original.__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return
    built: dict[Any, Any] = {}

    def from_torchlib(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = build(cls, *args, **kwargs)
        return built[key]

    registry_cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        registry_cls.from_torchlib = original


def export_graph(module: nn.Module, part: Part, path: Path, opset: int, tile: tuple[int, int] | None,
                 precision: str = "fp32") -> dict[str, Any]:
    """Write ``module`` as a single-file ONNX graph; returns its input/output names and shapes.

    ``tile`` fixes the image size; ``None`` exports symbolic ``height``/``width``. The example
    input only fixes what ``torch.export`` must not specialise on, so its size is arbitrary but
    non-square and never 1 (size-1 dims would be baked in as constants).
    """
    import onnx

    example_hw = tile if tile is not None else (part.stride * 6, part.stride * 10)
    example = torch.rand(part.input_shape(example_hw))
    in_name, out_name = part.io_names
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            graph_module(module, precision), (example,), str(path), dynamo=True, external_data=False, optimize=True,
            verbose=False, opset_version=opset, input_names=[in_name], output_names=[out_name],
            dynamic_shapes=None if tile is not None else (DYNAMIC_AXES,),
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return {"input": io_entry(model.graph.input[0]), "output": io_entry(model.graph.output[0])}


def io_entry(value: Any) -> dict[str, Any]:
    import onnx

    dims = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in value.type.tensor_type.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return {"name": value.name, "shape": dims, "dtype": str(np.dtype(dtype))}


@dataclass(frozen=True)
class ParityRow:
    """One graph, one input: how far ONNX Runtime is from the PyTorch module."""

    part: str
    image: tuple[int, int]
    input_shape: tuple[int, ...]
    max_abs: float
    peak: float
    tolerance: float

    @property
    def error(self) -> float:
        return self.max_abs / max(1.0, self.peak)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.tolerance

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image": list(self.image), "input_shape": list(self.input_shape), "error": self.error,
                "ok": self.ok}


def verification_image(image_hw: tuple[int, int], seed: int) -> torch.Tensor:
    """A reproducible [0, 1] test image: uniform noise, the hardest case for magnitudes and rounding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, *image_hw), generator=generator)


def verify_graph(session: Any, module: nn.Module, part: Part, cases: Sequence[tuple[tuple[int, int], torch.Tensor]],
                 tolerance: float) -> list[ParityRow]:
    """Run ``session`` and the PyTorch ``module`` on each ``(image size, input)`` case."""
    rows = []
    in_name = session.get_inputs()[0].name
    device = next(module.parameters()).device
    for image_hw, x in cases:
        with torch.inference_mode():
            want = module(x.to(device)).float().cpu().numpy()
        got = session.run(None, {in_name: x.numpy()})[0]
        if got.shape != want.shape:
            raise ExportError(f"{part.name}: ONNX output shape {list(got.shape)} differs from PyTorch {list(want.shape)} "
                              f"at input {list(x.shape)}; the export is broken, please report it")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        rows.append(ParityRow(part.name, image_hw, tuple(x.shape), diff, float(np.max(np.abs(want))), tolerance))
    return rows


def format_parity_table(rows: Sequence[ParityRow]) -> str:
    """Markdown table of parity rows (printed by ``cdcompress export`` and kept in docs)."""
    lines = ["| graph | image HxW | input shape | max abs diff | peak abs | error | tolerance | ok |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.part} | {r.image[0]}x{r.image[1]} | {'x'.join(map(str, r.input_shape))} | {r.max_abs:.2e} | "
                     f"{r.peak:.3g} | {r.error:.2e} | {r.tolerance:.0e} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines)


def check_parity(rows: Sequence[ParityRow]) -> None:
    """Raise one line naming the worst failures; export must not produce an unverified bundle."""
    failed = [r for r in rows if not r.ok]
    if failed:
        worst = sorted(failed, key=lambda r: -r.error)[:3]
        detail = "; ".join(f"{r.part} at {r.image[0]}x{r.image[1]}: {r.error:.2e} > {r.tolerance:.0e}" for r in worst)
        raise ExportError(f"ONNX parity check failed for {len(failed)} of {len(rows)} cases ({detail}); "
                          "the bundle was not written, please report this with the table above")

