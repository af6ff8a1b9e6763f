"""Which CPU runtime stylizes fastest? The candidates issue 15 named, measured in one interleaved run.

Five-level WCT (5..1, untiled) of the released 16x students at ``--size``² through: PyTorch eager
(fp32; and bf16 networks), the exported fp32 bundle on onnxruntime, the same graphs with every
reflect ``Pad`` folded into its ``Conv`` as zero padding (NOT the same result: the speed ceiling of
any fused-graph form, since an exact one must still recompute the border), and OpenVINO reading the
bundle's ONNX files (dynamic shapes, and static shapes compiled per input size) when the
``openvino`` package is installed. Also printed: the convolution throughput the eager path reaches
against this CPU's measured fp32 and bf16 matrix-multiply rates, which bounds what any fp32 runtime
can gain.

    python benchmarks/cpu_runtimes.py            # the table in docs/benchmarks.md
    python benchmarks/cpu_runtimes.py --size 256 --repeat 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export import SHARED, load_inputs, measure  # noqa: E402  (the benchmark next door)


def zero_padded_copy(bundle: Path, out: Path) -> Path:
    """The bundle with each reflect Pad removed and its Conv zero-padded instead (inexact: a speed ceiling)."""
    import shutil

    import onnx
    from onnx import helper

    shutil.copytree(bundle, out)
    for path in out.glob("*.onnx"):
        model = onnx.load(str(path))
        rename: dict[str, str] = {}
        kept = []
        for node in model.graph.node:
            mode = next((a.s.decode() for a in node.attribute if a.name == "mode"), "constant")
            if node.op_type == "Pad" and mode == "reflect":
                rename[node.output[0]] = node.input[0]
                continue
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
                    if node.op_type == "Conv":
                        pads = [a for a in node.attribute if a.name == "pads"]
                        if pads:
                            pads[0].ints[:] = [1, 1, 1, 1]
                        else:
                            node.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
            kept.append(node)
        del model.graph.node[:]
        model.graph.node.extend(kept)
        onnx.save(model, str(path))
    return out


class OpenVinoBackend:
    """The bundle's graphs compiled by OpenVINO's CPU plugin (fp32 inference precision)."""

    def __init__(self, bundle: Path, threads: int, static: bool) -> None:
        import openvino

        from cdcompress.export import OnnxBackend

        self.inner = OnnxBackend(bundle)  # manifest, checksums, architecture specs
        self.core = openvino.Core()
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        self.static = static
        self.requests: dict[Any, Any] = {}

    @property
    def levels(self) -> list[int]:
        return self.inner.levels

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        return self._run(f"enc{level}", image)

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return self._run(f"dec{level}", features)

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        key = (name, tuple(x.shape)) if self.static else name
        if key not in self.requests:
            model = self.core.read_model(str(self.inner.path / self.inner.manifest["parts"][name]["file"]))
            if self.static:
                model.reshape({model.inputs[0].any_name: list(x.shape)})
            self.requests[key] = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        array = x.detach().contiguous().numpy()
        return torch.from_numpy(self.requests[key].infer({0: array}, share_inputs=True, share_outputs=False)[0])


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeat: int = 5) -> float:
    """Measured GFLOP/s of an n x n matrix product (the CPU's practical peak for that dtype)."""
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: convert ../shared/reference/cd16x)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from cdcompress.cost.static import stylize_cost
    from cdcompress.export import OnnxBackend, export_bundle
    from cdcompress.models import convert_cd_release, load, save
    from cdcompress.stylization import TorchBackend

    with tempfile.TemporaryDirectory(prefix="cdcompress-runtimes-") as tmp:
        model_dir = args.model or save(convert_cd_release(SHARED / "reference/cd16x"), Path(tmp) / "cd16x")
        model = load(model_dir)
        bundle = Path(tmp) / "bundle"
        export_bundle(model, bundle, "onnx-dynamic", echo=lambda _: None, progress=False)
        backends: dict[str, Any] = {
            "PyTorch eager, fp32 (TorchBackend)": TorchBackend(model),
            "onnxruntime, fp32 bundle (OnnxBackend)": OnnxBackend(bundle, threads=args.threads),
            "onnxruntime, reflect Pad -> zero pad (inexact; ceiling of fused graphs)":
                OnnxBackend(zero_padded_copy(bundle, Path(tmp) / "zero"), threads=args.threads, verify=False),
        }
        try:
            import openvino

            version = openvino.__version__.split("-")[0]
            backends[f"OpenVINO {version}, fp32, dynamic shapes"] = OpenVinoBackend(bundle, args.threads, False)
            backends[f"OpenVINO {version}, fp32, static shapes"] = OpenVinoBackend(bundle, args.threads, True)
        except ImportError:
            print("(openvino not installed: `pip install openvino` adds its rows)", file=sys.stderr)
        backends["PyTorch eager, bf16 networks (TorchBackend precision='bf16')"] = TorchBackend(load(model_dir),
                                                                                                precision="bf16")
        content, style = load_inputs(args.size)
        results = measure(list(backends.values()), content, style, args.repeat)
    eager_total, _, eager_net, reference = results[0]
    cost = stylize_cost(model, [5, 4, 3, 2, 1], args.size)
    style_flops = 2 * stylize_cost(model, [5, 4, 3, 2, 1], 512).encoder_macs  # the style is encoded at each level
    flops = 2 * cost.macs + style_flops
    print(f"# CPU runtimes, {datetime.date.today()}, {os.cpu_count()} CPUs, {args.threads} threads, torch "
          f"{torch.__version__}, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print(f"| WCT 5..1, {args.size}² content, 512² style, untiled, median of {args.repeat} | total s | networks s "
          "| total vs eager | max abs diff vs eager | RMS diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (total, _best, net, result) in zip(backends, results, strict=True):
        diff = result.clamp(0, 1) - reference.clamp(0, 1)
        print(f"| {name} | {total:.2f} | {net:.2f} | {eager_total / total:.2f}x | {float(diff.abs().max()):.1e} | "
              f"{float(diff.pow(2).mean().sqrt()):.1e} |")
    print(f"\nnetwork work: {flops / 1e9:.0f} GFLOP per stylization; eager runs it at "
          f"{flops / eager_net / 1e9:.0f} GFLOP/s; this CPU's matrix products: fp32 {matmul_rate(torch.float32):.0f} "
          f"GFLOP/s, bf16 {matmul_rate(torch.bfloat16):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
