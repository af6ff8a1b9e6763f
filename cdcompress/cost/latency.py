"""Latency of one encoder (or encoder + decoder) forward pass on a named runtime.

A latency budget only means something on the runtime the student ships to, so the module is run there:
``eager`` (PyTorch on the CPU), ``bundle`` (exported to a fixed-shape float32 ONNX graph, run by ONNX Runtime),
``int8`` (that graph statically quantized, as ``cdcompress export --int8`` does) or ``cuda``. Each measurement
warms up, then takes the median of ``repeats`` timed runs (the median: a busy machine's outliers are slow ones).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.budget import RUNTIMES, BudgetError
from ..surgery.embed import flatten_outputs

WARMUP = 2


def measure_latency(encoder: nn.Module, decoder: nn.Module | None, shape: tuple[int, int, int, int], runtime: str,
                    *, threads: int | None = None, repeats: int = 7) -> float:
    """Median milliseconds of ``encoder`` (then ``decoder`` on its output, if given) on a random ``shape`` input."""
    if runtime not in RUNTIMES:
        raise BudgetError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        run = _runner(encoder, decoder, shape, runtime, threads)
        return _median_ms(run, repeats)
    finally:
        torch.set_num_threads(previous)


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _runner(encoder: nn.Module, decoder: nn.Module | None, shape: tuple[int, int, int, int], runtime: str,
            threads: int | None) -> Callable[[], object]:
    image = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    if runtime in ("eager", "cuda"):
        return _torch_runner(encoder, decoder, image, runtime)
    return _onnx_runner(encoder, decoder, image, runtime == "int8", threads)


def _torch_runner(encoder: nn.Module, decoder: nn.Module | None, image: torch.Tensor, runtime: str) -> Callable[[], object]:
    device = torch.device("cuda" if runtime == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BudgetError("runtime 'cuda' needs a CUDA GPU and PyTorch sees none here; measure on eager, bundle or int8")
    encoder = _frozen_copy(encoder, device)
    decoder = _frozen_copy(decoder, device) if decoder is not None else None
    image = image.to(device)

    def run() -> object:
        with torch.inference_mode():
            out = encoder(image)
            out = decoder(out) if decoder is not None else out
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def _frozen_copy(module: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(device).eval()


def _onnx_runner(encoder: nn.Module, decoder: nn.Module | None, image: torch.Tensor, int8: bool,
                 threads: int | None) -> Callable[[], object]:
    """Fixed-shape graphs (a deployed student at a known size), exported and quantized in a scratch folder."""
    from ..export.onnx import require_onnx
    from ..export.pair import export_pair_graph
    from ..export.runtime import make_session

    require_onnx()
    encoder = _frozen_copy(encoder, torch.device("cpu"))
    decoder = _frozen_copy(decoder, torch.device("cpu")) if decoder is not None else None
    hw = (int(image.shape[2]), int(image.shape[3]))
    channels = int(image.shape[1])
    sessions = []
    with tempfile.TemporaryDirectory(prefix="cdcompress-latency-") as scratch:
        graphs = [("encoder", encoder)] + ([("decoder", (encoder, decoder))] if decoder is not None else [])
        inputs = [image.numpy()]
        for role, module in graphs:
            path = Path(scratch) / f"{role}.onnx"
            export_pair_graph(module, role, path, 18, hw, channels)
            if int8:
                path = _quantized(path, role, inputs)
            sessions.append(make_session(path, threads=threads))
            if role == "encoder" and decoder is not None:
                with torch.no_grad():
                    inputs = [np.ascontiguousarray(t.numpy()) for t in flatten_outputs(encoder(image)).values()]
    feed = image.numpy()

    def run() -> object:
        outputs = sessions[0].run(None, {sessions[0].get_inputs()[0].name: feed})
        if len(sessions) > 1:
            names = [i.name for i in sessions[1].get_inputs()]
            outputs = sessions[1].run(None, dict(zip(names, outputs, strict=True)))
        return outputs

    return run


def _quantized(path: Path, role: str, inputs: list[np.ndarray]) -> Path:
    """Static INT8 of one graph, calibrated on the measurement's own input: ranges do not change the speed."""
    from ..export.int8 import quantize_graph

    target = path.with_name(f"{role}-int8.onnx")
    try:
        if len(inputs) == 1:
            quantize_graph(path, target, [inputs[0]], role)
        else:  # a decoder of several feature maps: its calibration reader feeds every input by name
            _quantize_multi_input(path, target, inputs, role)
    except (ValueError, RuntimeError, NotImplementedError) as exc:  # onnxruntime's quantizer refusing this graph
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BudgetError(f"runtime 'int8': onnxruntime cannot quantize this {role} graph ({first}); measure on "
                          "'bundle' (fp32) instead") from None
    return target


def _quantize_multi_input(path: Path, target: Path, inputs: list[np.ndarray], role: str) -> None:
    import onnx

    from ..export.int8 import boundary_convs, require_quantization

    q = require_quantization()
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]

    class Reader:
        def __init__(self) -> None:
            self.items = iter([dict(zip(names, inputs, strict=True))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    q.quantize_static(str(path), str(target), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                      nodes_to_exclude=boundary_convs(path, role))
