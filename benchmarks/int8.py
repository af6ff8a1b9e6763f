"""INT8 on CPU, in one interleaved run: eager fp32, bf16, the fp32 bundle, INT8 from PTQ and INT8 from QAT.

Five-level WCT (5..1, untiled) of a held-out photo resized to each ``--sizes`` entry (default the holdout-sized
1024x576 and 1024x1024), 256x256 style, through every runtime, teacher and student; each round runs every
(runtime, model) once, medians of ``--repeats`` rounds after a warm-up. Beside each student time: the stylization's
RMS and PSNR against the float student's eager result (what INT8 costs in quality), the bundle's INT8 levels and
the gate's verdict. Then the process wall of a one-off ``cdcompress stylize`` call per runtime (import, load, run,
write), and per graph at 1024x1024: the encoder/decoder of each level timed alone in every runtime, which says
where INT8 gains and where it cannot.

The PTQ bundle is gated like ``export --int8`` (levels past the per-level or cascade gate stay float32; a refusal
is reported); "PTQ, all int8" is the same graphs with no gate, a speed figure only. The teacher has random
weights unless ``--teacher`` names trained ones: its rows are speed figures.

    python benchmarks/int8.py --float models/cd16x --qat models/cd16x-qat        # the tables in docs/benchmarks.md
    python benchmarks/int8.py --float models/cd16x --qat models/cd16x-qat --sizes 256x256 --repeats 1 --no-process
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LEVELS = [5, 4, 3, 2, 1]


def held_out_photo(scratch: Path) -> Path:
    """A photo no student here trained on: ../shared's content/in1.jpg, else scikit-image's held-out pair's first."""
    shared = SHARED / "images" / "content" / "in1.jpg"
    if shared.is_file():
        return shared
    from cdcompress.data.batches import skimage_split

    return skimage_split(scratch / "skimage")[1][0]


def sized(photo: Path, height: int, width: int) -> torch.Tensor:
    """The photo resized to cover ``height`` x ``width``, centre-cropped to it."""
    from cdcompress.data.images import load_image

    image = load_image(photo)
    scale = max(height / image.shape[-2], width / image.shape[-1])
    size = (max(height, round(image.shape[-2] * scale)), max(width, round(image.shape[-1] * scale)))
    image = torch.nn.functional.interpolate(image, size=size, mode="area" if scale < 1 else "bilinear")
    top, left = (image.shape[-2] - height) // 2, (image.shape[-1] - width) // 2
    return image[..., top:top + height, left:left + width].contiguous()


def bundles(models: dict[str, Any], scratch: Path, echo: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every bundle of every model: ``{model: {"fp32": path, "ptq": path | reason, "ptq-all": path, "qat": ...}}``."""
    from cdcompress.export import export_bundle
    from cdcompress.export.errors import ExportError
    from cdcompress.export.int8 import QualityGate, quantize_bundle
    from cdcompress.export.int8_record import trained_ranges

    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        fp32 = scratch / f"{name}-fp32"
        if not (fp32 / "manifest.json").is_file():  # a --workdir keeps bundles from an earlier run
            export_bundle(model, fp32, "onnx-dynamic", LEVELS, echo=lambda _: None, progress=False, overwrite=True)
        out[name] = {"fp32": fp32}
        ranges = trained_ranges(model, LEVELS)
        kind = "qat" if ranges else "ptq"
        if name != "teacher":  # a random-weight teacher's gate judges noise: its INT8 row is the ungated speed figure
            reference = out.get("student", {}).get("fp32") if kind == "qat" else None
            cached = scratch / f"{name}-{kind}" / "manifest.json"
            if cached.is_file():
                out[name][kind] = cached.parent
                out[name][f"{kind}-levels"] = json.loads(cached.read_text())["int8_levels"]
            else:
                try:
                    result = quantize_bundle(fp32, scratch / f"{name}-{kind}", ranges=ranges, reference=reference,
                                             echo=lambda line, n=name: echo(f"[{n}] {line}"), overwrite=True)
                    out[name][kind] = result.path
                    out[name][f"{kind}-levels"] = result.manifest["int8_levels"]
                except ExportError as exc:
                    out[name][kind] = f"refused: {str(exc).split(';')[0]}"
        if kind == "ptq" and (scratch / f"{name}-ptq-all" / "manifest.json").is_file():
            out[name]["ptq-all"] = scratch / f"{name}-ptq-all"
        elif kind == "ptq":
            loose = QualityGate(max_psnr_drop=1e9, max_wct_rmse=1e9, max_cascade_rmse=1e9)
            result = quantize_bundle(fp32, scratch / f"{name}-ptq-all", gate=loose, echo=lambda _: None, overwrite=True)
            out[name]["ptq-all"] = result.path
    return out


def median_seconds(runners: dict[tuple[str, str], Callable[[], Any]], repeats: int) -> dict[tuple[str, str], float]:
    from cdcompress.cost.measure import interleaved

    times = interleaved(runners, repeats, progress=lambda line: print(f"  {line}", file=sys.stderr))
    return {key: statistics.median(values) for key, values in times.items()}


def stylization_table(models: dict[str, Any], built: dict[str, dict[str, Any]], content: torch.Tensor,
                      style: torch.Tensor, repeats: int, threads: int) -> tuple[str, dict[str, Any]]:
    from cdcompress.evaluation.metrics import psnr
    from cdcompress.export import OnnxBackend
    from cdcompress.stylization import stylize
    from cdcompress.stylization.backend import TorchBackend

    backends: dict[tuple[str, str], Any] = {}
    for name, model in models.items():
        backends[name, "eager fp32"] = TorchBackend(model)
        backends[name, "bf16"] = TorchBackend(model, precision="bf16")
        backends[name, "fp32 bundle"] = OnnxBackend(built[name]["fp32"], threads=threads)
        for kind, label in (("ptq", "INT8 PTQ (gated)"), ("ptq-all", "INT8 PTQ, all int8 (no gate)"),
                            ("qat", "INT8 QAT (gated)")):
            if isinstance(built[name].get(kind), Path):
                backends[name, label] = OnnxBackend(built[name][kind], threads=threads)
    runners = {key: (lambda b=b: stylize(b, content, style, levels=LEVELS, tile=0)) for key, b in backends.items()}
    seconds = median_seconds(runners, repeats)
    reference = stylize(backends["student", "eager fp32"], content, style, levels=LEVELS, tile=0).double()
    eager = seconds["student", "eager fp32"]
    rows = ["| runtime | model | s | vs the float student's eager | RMS vs float eager | PSNR vs float eager (dB) |",
            "|---|---|---:|---:|---:|---:|"]
    record: dict[str, Any] = {}
    for (name, runtime), value in seconds.items():
        result = stylize(backends[name, runtime], content, style, levels=LEVELS, tile=0).double()
        quality = ("-", "-")
        if name != "teacher":
            mse = float((result - reference).pow(2).mean())
            quality = (f"{mse ** 0.5:.4f}", f"{psnr(result, reference):.2f}" if mse > 0 else "inf")
        rows.append(f"| {runtime} | {name} | {value:.3f} | {eager / value:.2f}x | {quality[0]} | {quality[1]} |")
        record[f"{name} / {runtime}"] = {"seconds": value, "rms": quality[0], "psnr": quality[1]}
    return "\n".join(rows), record


def per_graph_table(models: dict[str, Any], built: dict[str, dict[str, Any]], repeats: int, threads: int,
                    side: int = 1024) -> str:
    """Each student graph alone at the size the 1024² cascade feeds it: where INT8 gains and where it cannot."""
    from cdcompress.export import OnnxBackend

    model = models["student"]
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    inputs = {}
    with torch.inference_mode():
        for level in LEVELS:
            inputs[f"enc{level}"] = image
            inputs[f"dec{level}"] = model.encoder(level)(image).contiguous()
    runtimes: dict[str, Callable[[str, torch.Tensor], Any]] = {}
    eager = {f"enc{k}": model.encoder(k) for k in LEVELS} | {f"dec{k}": model.decoder(k) for k in LEVELS}
    bf16 = {n: copy.deepcopy(m).to(torch.bfloat16) for n, m in eager.items()}

    def torch_runner(table: dict[str, Any], dtype: torch.dtype) -> Callable[[str, torch.Tensor], Any]:
        def run(graph: str, x: torch.Tensor) -> Any:
            from cdcompress.models.vgg import fused_inference

            with torch.inference_mode(), fused_inference():
                return table[graph](x.to(dtype).contiguous(memory_format=torch.channels_last))
        return run

    runtimes["eager fp32"] = torch_runner(eager, torch.float32)
    runtimes["bf16"] = torch_runner(bf16, torch.bfloat16)
    for kind, label in (("fp32", "fp32 bundle"), ("ptq-all", "INT8 (all levels)")):
        runtimes[label] = bundle_runner(OnnxBackend(built["student"][kind], threads=threads))
    if isinstance(built.get("student-qat", {}).get("qat"), Path):
        runtimes["INT8 QAT bundle"] = bundle_runner(OnnxBackend(built["student-qat"]["qat"], threads=threads))
    runners = {(graph, label): (lambda g=graph, r=run: r(g, inputs[g])) for graph in inputs for label, run in runtimes.items()}
    seconds = median_seconds(runners, repeats)
    head = "| graph | input | " + " | ".join(f"{label} ms" for label in runtimes) + " | INT8 vs eager | INT8 vs bf16 |"
    rows = [head, "|---|---|" + "---:|" * (len(runtimes) + 2)]
    for graph in inputs:
        cells = [f"{seconds[graph, label] * 1e3:.1f}" for label in runtimes]
        int8 = seconds[graph, "INT8 (all levels)"]
        shape = "x".join(map(str, inputs[graph].shape[1:]))
        rows.append(f"| {graph} | {shape} | " + " | ".join(cells) +
                    f" | {seconds[graph, 'eager fp32'] / int8:.2f}x | {seconds[graph, 'bf16'] / int8:.2f}x |")
    return "\n".join(rows)


def bundle_runner(backend: Any) -> Callable[[str, torch.Tensor], Any]:
    """Run graph ``enc5``/``dec3``... of a bundle backend by name."""
    def run(graph: str, x: torch.Tensor) -> Any:
        level = int(graph[3:])
        return backend.encode(level, x) if graph.startswith("enc") else backend.decode(level, x)
    return run


def process_table(model_dirs: dict[str, Path], built: dict[str, dict[str, Any]], photo: Path, style: Path,
                  scratch: Path, repeats: int) -> str:
    """Wall time of one-off ``cdcompress stylize`` calls (a fresh process each: imports, loading, the run, the PNG)."""
    exe = Path(sys.executable).parent / "cdcompress"
    calls: dict[str, list[str]] = {"eager fp32": ["--model", str(model_dirs["student"])],
                                   "bf16": ["--model", str(model_dirs["student"]), "--precision", "bf16"],
                                   "fp32 bundle": ["--bundle", str(built["student"]["fp32"])]}
    if isinstance(built["student"].get("ptq"), Path):
        calls["INT8 PTQ (gated)"] = ["--bundle", str(built["student"]["ptq"])]
    if isinstance(built.get("student-qat", {}).get("qat"), Path):
        calls["INT8 QAT (gated)"] = ["--bundle", str(built["student-qat"]["qat"])]
    walls: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(repeats):
        for label, args in calls.items():
            began = time.perf_counter()
            subprocess.run([str(exe), "stylize", *args, "--content", str(photo), "--style", str(style), "--tile", "0",
                            "--out", str(scratch / "out.png")], check=True, capture_output=True)
            walls[label].append(time.perf_counter() - began)
    rows = ["| runtime (student, one `cdcompress stylize` process) | wall s (median) |", "|---|---:|"]
    rows += [f"| {label} | {statistics.median(values):.2f} |" for label, values in walls.items()]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--float", dest="float_model", type=Path, required=True, help="the float student (model dir)")
    parser.add_argument("--qat", type=Path, required=True, help="its `cdcompress quantize` fine-tune (model dir)")
    parser.add_argument("--teacher", default="vgg19", help="teacher model dir or built-in [vgg19: random weights]")
    parser.add_argument("--sizes", default="1024x576,1024x1024", help="content sizes HxW, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-process", action="store_true", help="skip the one-off process timings")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the float32 bundles here between runs [default: a temporary folder]")
    parser.add_argument("--build-only", action="store_true", help="build the bundles into --workdir and stop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from cdcompress.models.resolve import resolve_model

    models = {"teacher": resolve_model(args.teacher)[0], "student": resolve_model(args.float_model)[0],
              "student-qat": resolve_model(args.qat)[0]}
    print(f"# INT8 on CPU: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
          f"{args.threads} threads, torch {torch.__version__}\n")
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cdcompress-int8-bench-") as tmp:
        scratch = args.workdir or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        built = bundles(models, scratch, lambda line: print(line, file=sys.stderr))
        if args.build_only:
            return
        for name, found in built.items():
            print(f"- {name}: " + ", ".join(f"{k} {v if not isinstance(v, Path) else 'built'}" for k, v in found.items()))
        photo = held_out_photo(scratch)
        style_photo = SHARED / "images" / "style" / "in2.jpg"
        style = sized(style_photo if style_photo.is_file() else photo, 256, 256)
        for size in args.sizes.split(","):
            height, width = map(int, size.lower().split("x"))
            content = sized(photo, height, width)
            table, record = stylization_table(models, built, content, style, args.repeats, args.threads)
            print(f"\n## Five-level WCT, {height}x{width} content ({photo.name}), 256x256 style, untiled\n\n{table}")
            figures[size] = record
        print(f"\n## Per graph, 1024x1024 (student, median of {args.repeats})\n\n"
              f"{per_graph_table(models, built, args.repeats, args.threads)}")
        if not args.no_process:
            content_file, style_file = scratch / "content.png", scratch / "style.png"
            from cdcompress.data.images import save_image

            save_image(sized(photo, 576, 1024), content_file)
            save_image(style, style_file)
            print(f"\n## One-off process, 1024x576\n\n"
                  f"{process_table({'student': args.float_model}, built, content_file, style_file, scratch, args.repeats)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
