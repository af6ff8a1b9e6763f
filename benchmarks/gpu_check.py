"""One report of what a GPU machine proves: the suite on CUDA, NCCL training, AMP, 4K WCT and the ONNX GPU bundle.

Each check runs on its own; a failure is recorded (with its error) and the next check still runs. The report
(``gpu_check.json`` and ``gpu_check.md`` in ``--out``) carries the date, the device, and each check's result,
seconds and numbers, so a GPU claim in the docs can cite it. ``--device cpu`` runs the same checks on the CPU
(gloo instead of NCCL, the CPU execution provider, AMP as the CPU applies it) and ``--quick`` shrinks every size,
which is how CI keeps this script from rotting (tests/test_gpu_check.py).

    python benchmarks/gpu_check.py                     # a CUDA GPU: about 5 minutes; see scripts/gpu_check.sh
    python benchmarks/gpu_check.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
#: The suite's CUDA subset: every test marked cuda, the virtual-device placement tests, and the tests that train,
#: stylize or run a bundle on ``--device`` (bounded so the whole check fits in 8 minutes on one GPU).
SUITE = ["tests/test_cuda.py", "tests/test_device_placement.py", "tests/test_any_pair.py::test_own_pair_end_to_end",
         "tests/test_stylize.py::test_tiled_equals_untiled",
         "tests/test_export.py::test_onnx_backend_matches_pytorch_at_unseen_odd_sizes"]
QUICK_SUITE = ["tests/test_device_placement.py::test_harness_catches_a_cpu_tensor_meeting_gpu_weights"]

DDP_RECIPE = textwrap.dedent(
    """
    name: gpu_check_ddp
    device: {device}
    levels: [{level}]
    teacher: {{source: builtin, path: vgg19, pretrained: none}}
    collaborator: {{source: train, min_psnr: 0}}
    student: {{width: 0.25}}
    objective: {{lambda_p: 0.1}}
    data: {{train: [skimage], eval: [skimage-heldout], resize: {resize}, crop: {crop}, eval_size: {resize}}}
    stages:
      collaborator: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
      distill: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
      decoder: {{steps: {steps}, batch: 4, lr: 1.0e-3}}
    output: {{checkpoint_every: 0, log_every: 1}}
    """
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes and step counts (CI, smoke runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check", help="where the report goes")
    parser.add_argument("--skip", nargs="*", default=[], help="checks not to run (suite, ddp, amp, stylize, onnx)")
    return parser.parse_args(argv)


def sized(args: argparse.Namespace, full: Any, quick: Any) -> Any:
    return quick if args.quick else full


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}


def _subprocess(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


# ----------------------------------------------------------------------------- checks


def check_suite(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The test subset on ``--device`` (CUDA tests skip cleanly when no GPU is there)."""
    tests = sized(args, SUITE, QUICK_SUITE)
    out = _subprocess([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", args.device,
                       *tests], timeout=300)
    summary = [line for line in out.splitlines() if " passed" in line or " failed" in line or " skipped" in line]
    return {"tests": tests, "summary": summary[-1] if summary else out[-200:]}


def check_ddp(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """``cdcompress distill --nproc 2``: NCCL on GPUs (both processes share one GPU if only one is there), gloo on CPU."""
    steps = sized(args, 6, 1)
    recipe = scratch / "ddp.yaml"
    recipe.write_text(DDP_RECIPE.format(device=args.device, steps=steps, level=sized(args, 2, 1), resize=sized(args, 96, 40),
                                        crop=sized(args, 64, 32)))
    began = time.perf_counter()
    _subprocess([sys.executable, "-m", "cdcompress", "distill", "--recipe", str(recipe), "--out",
                 str(scratch / "ddp"), "--nproc", "2"], timeout=300)
    records = [json.loads(line) for line in (scratch / "ddp" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["total"] for r in records if "total" in r]
    if len(losses) != 3 * steps or not all(map(_finite, losses)):
        raise RuntimeError(f"expected {3 * steps} finite logged losses from rank 0, got {losses}")
    return {"backend": "nccl" if args.device.startswith("cuda") else "gloo", "processes": 2, "steps_per_stage": steps,
            "seconds": round(time.perf_counter() - began, 2), "last_loss": round(losses[-1], 5)}


def check_amp(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """bf16 and fp16 training steps of a VGG pair (stage 2): finite losses, and whether autocast applied."""
    import cdcompress
    from cdcompress.distill.trainer import autocast_applies
    from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec

    spec = VGGSpec.vgg19(2)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 3, sized(args, 128, 32), sized(args, 128, 32), generator=generator)
    results: dict[str, Any] = {}
    for amp in ("bf16", "fp16"):
        distiller = cdcompress.apply(VGGEncoder(spec), VGGDecoder(spec), slim=0.5)
        config = cdcompress.TrainConfig(steps=sized(args, 20, 2), lr=1e-3, amp=amp, device=args.device, log_every=1)
        began = time.perf_counter()
        result = distiller.fit([images[:4], images[4:]], config)
        losses = [h["total"] for h in result.history]
        if not all(map(_finite, losses)):
            raise RuntimeError(f"amp {amp}: non-finite losses {losses}")
        results[amp] = {"autocast": autocast_applies(amp, torch.device(args.device)),
                        "steps_per_s": round(config.steps / (time.perf_counter() - began), 2),
                        "first_loss": round(losses[0], 5), "last_loss": round(losses[-1], 5)}
    return results


def check_stylize(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Device-resident five-level WCT of one frame (4096x2160 on a GPU), its time and peak device memory."""
    from cdcompress.models.resolve import resolve_model
    from cdcompress.stylization import TorchBackend, stylize

    height, width = sized(args, (2160, 4096), (96, 160))
    torch.manual_seed(0)
    backend = TorchBackend(resolve_model("vgg19-x0.25")[0], device=args.device)
    generator = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, height, width, generator=generator), torch.rand(1, 3, 256, 256, generator=generator)
    stylize(backend, content[..., :256, :256], style, tile=0)  # warm-up: cuDNN algorithms, allocator
    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    out = stylize(backend, content, style, tile=0)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    assert isinstance(out, torch.Tensor) and out.shape == content.shape and bool(torch.isfinite(out).all())
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"size": f"{width}x{height}", "model": "vgg19-x0.25 (random weights)", "levels": "5,4,3,2,1",
            "seconds": round(seconds, 3), "peak_gib": round(peak, 3) if peak is not None else None}


def check_onnx(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """An exported bundle stylizes through onnxruntime: the CUDA execution provider on a GPU, else the CPU's."""
    from cdcompress.export import OnnxBackend, export_bundle, load_profile
    from cdcompress.models.resolve import resolve_model
    from cdcompress.stylization import stylize

    torch.manual_seed(0)
    model = resolve_model("vgg19-x0.25")[0]
    bundle = scratch / "bundle"
    levels = sized(args, [2, 1], [1])
    export_bundle(model, bundle, load_profile("onnx-dynamic"), levels, model_ref="vgg19-x0.25", echo=lambda _: None,
                  progress=False)
    wanted = "CUDAExecutionProvider" if args.device.startswith("cuda") else "CPUExecutionProvider"
    backend = OnnxBackend(bundle, providers=[wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider"
                          else [wanted])
    side = sized(args, 1024, 64)
    generator = torch.Generator().manual_seed(0)
    content, style = torch.rand(1, 3, side, side, generator=generator), torch.rand(1, 3, 128, 128, generator=generator)
    stylize(backend, content, style, levels=levels, tile=0)  # warm-up: sessions, provider set-up
    began = time.perf_counter()
    out = stylize(backend, content, style, levels=levels, tile=0)
    seconds = time.perf_counter() - began
    active = backend.session("enc1").get_providers()
    if active[0] != wanted:
        raise RuntimeError(f"onnxruntime runs the bundle on {active[0]}, not {wanted}")
    assert isinstance(out, torch.Tensor) and bool(torch.isfinite(out).all())
    return {"provider": active[0], "size": f"{side}x{side}", "levels": ",".join(map(str, levels)),
            "seconds": round(seconds, 3)}


CHECKS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "suite": check_suite, "ddp": check_ddp, "amp": check_amp, "stylize": check_stylize, "onnx": check_onnx}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


# ----------------------------------------------------------------------------- report


def run_check(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One check, timed; an exception becomes a failed entry so the other checks still run."""
    began = time.perf_counter()
    try:
        entry: dict[str, Any] = {"ok": True, "numbers": CHECKS[name](args, scratch)}
    except Exception as exc:  # recorded, not fatal: the report says what failed and why
        entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[-2000:],
                 "trace": traceback.format_exc()[-4000:]}
    entry["seconds"] = round(time.perf_counter() - began, 2)
    print(f"gpu_check: {name}: {'pass' if entry['ok'] else 'FAIL'} ({entry['seconds']} s)", file=sys.stderr, flush=True)
    return entry


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Device check {report['date']}", "",
             f"Device: {report['device_name']} (`--device {report['device']}`{', quick' if report['quick'] else ''}); "
             f"torch {report['torch']}, CUDA {report['cuda']}.", "", "| check | result | seconds | numbers |",
             "|---|---|---|---|"]
    for name, entry in report["checks"].items():
        numbers = json.dumps(entry.get("numbers", {})) if entry["ok"] else entry["error"].splitlines()[0][:200]
        lines.append(f"| {name} | {'pass' if entry['ok'] else 'FAIL'} | {entry['seconds']} | {numbers.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.skip) - set(CHECKS)
    if unknown:
        raise SystemExit(f"--skip: unknown check(s) {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    report: dict[str, Any] = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "device": args.device,
                              "device_name": device_name(args.device), "quick": args.quick, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in CHECKS:
            if name not in args.skip:
                report["checks"][name] = run_check(name, args, Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(entry["ok"] for entry in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
