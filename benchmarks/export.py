"""Exported bundle vs PyTorch eager: WCT stylization time at 1024², network time, and sizes on disk.

The released 16x students (``../shared/reference/cd16x``) are converted, exported to a dynamic ONNX
bundle, and the same five-level WCT (5..1, untiled) is run with ``TorchBackend`` and ``OnnxBackend``.
Both backends are wrapped in a timer so the table separates encoder/decoder time (what export
changes) from the WCT statistics and eigen-decompositions (PyTorch in both). One warm-up run each,
then the median of ``--repeat`` runs. ``--variants`` also times ONNX Runtime session settings.

    python benchmarks/export.py                       # the table in docs/benchmarks.md
    python benchmarks/export.py --size 512 --repeat 1 # quick
    python benchmarks/export.py --int8                # + the INT8 bundle in the same interleaved runs
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


class TimedBackend:
    """Forwards to a backend and adds up the seconds spent in encode/decode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    @property
    def levels(self) -> list[int]:
        return self.inner.levels

    def __getattr__(self, name: str) -> Any:  # specs (for tiling), providers, ...
        return getattr(self.inner, name)

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.encode, level, image)

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return self._timed(self.inner.decode, level, features)

    def _timed(self, fn: Callable[[int, torch.Tensor], torch.Tensor], level: int, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = fn(level, x)
        self.seconds += time.perf_counter() - start
        return out


def load_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """content/in1.jpg resized to size², style/in3.jpg (512²); random images if ../shared is absent."""
    import torch.nn.functional as F

    from cdcompress.data.images import load_image

    content_path, style_path = SHARED / "images/content/in1.jpg", SHARED / "images/style/in3.jpg"
    if not content_path.is_file():
        generator = torch.Generator().manual_seed(0)
        return torch.rand((1, 3, size, size), generator=generator), torch.rand((1, 3, 512, 512), generator=generator)
    content = F.interpolate(load_image(content_path), size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return content, load_image(style_path)


def measure(backends: list[Any], content: torch.Tensor, style: torch.Tensor,
            repeat: int) -> list[tuple[float, float, float, torch.Tensor]]:
    """Per backend: median total, best total and median network seconds of untiled five-level WCT.

    One warm-up run each; the measured runs alternate between backends so that load from other
    processes on a shared machine hits them alike.
    """
    from cdcompress.stylization import stylize

    timed = [TimedBackend(b) for b in backends]
    results = [stylize(t, content, style, method="wct", tile=0) for t in timed]
    totals: list[list[float]] = [[] for _ in timed]
    nets: list[list[float]] = [[] for _ in timed]
    for _ in range(repeat):
        for i, backend in enumerate(timed):
            backend.seconds = 0.0
            start = time.perf_counter()
            results[i] = stylize(backend, content, style, method="wct", tile=0)
            totals[i].append(time.perf_counter() - start)
            nets[i].append(backend.seconds)
    return [(statistics.median(t), min(t), statistics.median(n), r) for t, n, r in zip(totals, nets, results, strict=True)]


def ort_variants(bundle: Path, content: torch.Tensor, style: torch.Tensor, repeat: int) -> list[tuple[str, float, float, float]]:
    """Stylization time under other ONNX Runtime session settings (to back the chosen defaults)."""
    import onnxruntime as ort

    from cdcompress.export import OnnxBackend, runtime

    default = runtime.make_session
    rows = []
    variants: dict[str, dict[str, Any]] = {
        "basic graph optimisation": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
        "no graph optimisation": {"level": ort.GraphOptimizationLevel.ORT_DISABLE_ALL},
        "threads spin (ORT default)": {"spin": "1"},
        "1 intra-op thread": {"threads": 1},
    }
    for name, cfg in variants.items():
        def make(path: Any, providers: Any = (runtime.CPU,), threads: int | None = None, cfg: dict = cfg) -> Any:
            options = ort.SessionOptions()
            options.graph_optimization_level = cfg.get("level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", cfg.get("spin", "0"))
            options.intra_op_num_threads = cfg.get("threads", 0)
            return ort.InferenceSession(str(path), options, providers=list(providers))

        runtime.make_session = make
        try:
            total, best, net, _ = measure([OnnxBackend(bundle)], content, style, repeat)[0]
        finally:
            runtime.make_session = default
        rows.append((name, total, best, net))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: convert ../shared/reference/cd16x)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--variants", action="store_true", help="also time other ONNX Runtime settings")
    parser.add_argument("--int8", action="store_true", help="also quantize the bundle (export --int8) and time it in the "
                                                            "same interleaved runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from cdcompress.export import OnnxBackend, export_bundle, load_profile
    from cdcompress.models import convert_cd_release, load, save
    from cdcompress.stylization import TorchBackend

    with tempfile.TemporaryDirectory(prefix="cdcompress-bench-") as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = save(convert_cd_release(SHARED / "reference/cd16x"), Path(tmp) / "cd16x")
        model = load(model_dir)
        bundle = Path(tmp) / "bundle"
        start = time.perf_counter()
        export_bundle(model, bundle, load_profile("onnx-dynamic"), model_dir=model_dir, echo=lambda _: None, progress=False)
        export_seconds = time.perf_counter() - start
        content, style = load_inputs(args.size)
        backends = [TorchBackend(model), OnnxBackend(bundle, threads=args.threads)]
        int8_note = ""
        if args.int8:
            from cdcompress.export.int8 import quantize_bundle

            quantized = quantize_bundle(bundle, Path(tmp) / "int8", echo=lambda _: None)
            backends.append(OnnxBackend(quantized.path, threads=args.threads))
            int8_note = f"int8 levels {','.join(map(str, quantized.manifest['int8_levels']))}, the rest float32"
        measured = measure(backends, content, style, args.repeat)
        (eager_total, eager_best, eager_net, eager), (ort_total, ort_best, ort_net, exported) = measured[:2]
        variants = ort_variants(bundle, content, style, args.repeat) if args.variants else []
        release = [SHARED / f"reference/cd16x/s{role}{k}.pth" for role in "ed" for k in range(1, 6)]
        sizes = {
            "release se1..5 + sd1..5 .pth (with embedding branches)": sum(p.stat().st_size for p in release if p.is_file()),
            "model dir (safetensors + model.json)": sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file()),
            "bundle (10 .onnx + manifest.json)": sum(p.stat().st_size for p in bundle.iterdir() if p.is_file()),
        }
    diff = float((eager - exported).abs().max())
    print(f"# export benchmark, {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} threads, torch {torch.__version__}, {_ort_version()}\n")
    print(f"load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"({os.cpu_count()} cores: above that, other processes competed for them)\n")
    print(f"export + verification of 5 levels: {export_seconds:.1f} s\n")
    print(f"| WCT 5..1, {args.size}x{args.size} content, 512x512 style, untiled | total s (median) | total s (best) "
          "| encoders+decoders s (median) |")
    print("|---|---|---|---|")
    print(f"| PyTorch eager (TorchBackend) | {eager_total:.2f} | {eager_best:.2f} | {eager_net:.2f} |")
    print(f"| onnxruntime CPU (OnnxBackend) | {ort_total:.2f} | {ort_best:.2f} | {ort_net:.2f} |")
    print(f"| speed-up | {eager_total / ort_total:.2f}x | {eager_best / ort_best:.2f}x | {eager_net / ort_net:.2f}x |")
    for name, total, best, net in variants:
        print(f"| onnxruntime, {name} | {total:.2f} | {best:.2f} | {net:.2f} |")
    if args.int8:
        total, best, net, result = measured[2]
        print(f"| onnxruntime CPU, INT8 bundle ({int8_note}) | {total:.2f} | {best:.2f} | {net:.2f} |")
        print(f"| speed-up of INT8 over eager | {eager_total / total:.2f}x | {eager_best / best:.2f}x | {eager_net / net:.2f}x |")
        print(f"| speed-up of INT8 over the fp32 bundle | {ort_total / total:.2f}x | {ort_best / best:.2f}x | "
              f"{ort_net / net:.2f}x |")
        print(f"\nmax |eager - INT8 bundle| on the [0, 1] result: {float((eager - result).abs().max()):.2e}, "
              f"RMS {float((eager - result).pow(2).mean().sqrt()):.2e}")
    print(f"\nmax |eager - onnxruntime| on the [0, 1] result: {diff:.2e}\n")
    print("| artefact | bytes |\n|---|---|")
    for name, size in sizes.items():
        print(f"| {name} | {size:,} |")
    sys.stdout.flush()


def _ort_version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


if __name__ == "__main__":
    main()
