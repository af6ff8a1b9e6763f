"""Budgets met: params, MACs and latency targets searched, then the chosen students re-measured independently.

For each pair (the U-Net denoiser teacher of docs/experiment_denoise.md when ``runs/denoise/teacher`` exists, the WCT
level-3 teacher when ../shared has it, else a randomly initialised VGG-19 level 3) and each target, ``apply`` searches
the widths; then the student is measured again in a fresh measurement (latency: a new median of ``--repeats`` runs)
and the error against the target is printed. Prints a Markdown table; ``--json`` writes the rows.

    python benchmarks/budget_targets.py                       # params, MACs, eager/bundle/int8 latency targets
    python benchmarks/budget_targets.py --runtimes eager --pairs unet
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

import cdcompress
from cdcompress.core.budget import Budget, BudgetError
from cdcompress.cost.latency import measure_latency
from cdcompress.cost.static import count_macs
from cdcompress.surgery.modules import count_parameters

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pairs(names: Sequence[str]) -> dict[str, tuple[nn.Module, nn.Module, int]]:
    """name -> (encoder, decoder, side) for the pairs that are available here."""
    found: dict[str, tuple[nn.Module, nn.Module, int]] = {}
    if "unet" in names and (ROOT / "runs/denoise/teacher/model.json").is_file():
        model = cdcompress.load(ROOT / "runs/denoise/teacher")
        found["unet (denoise teacher)"] = (model.encoder().eval(), model.decoder().eval(), 256)
    if "wct3" in names:
        from cdcompress.models.vgg import VGGDecoder, VGGEncoder, VGGSpec

        folder = SHARED / "reference" / "wct-vgg19"
        if (folder / "vgg_normalised_conv3_1.pth").is_file():
            from cdcompress.distill.recipe import TeacherSpec
            from cdcompress.distill.teachers import load_teacher

            teacher = load_teacher(TeacherSpec(source="wct-pytorch", path=str(folder)), 3)
            found["wct level 3 (real teacher)"] = (teacher.encoder, teacher.decoder, 512)
        else:
            torch.manual_seed(0)
            spec = VGGSpec.vgg19(3)
            found["vgg19 level 3 (random weights)"] = (VGGEncoder(spec), VGGDecoder(spec), 512)
    return found


def targets(runtimes: Sequence[str]) -> list[dict]:
    rows = [{"params": "25%"}, {"macs": "25%"}, {"macs": "50%"}]
    rows += [{"latency_ms": "40%", "runtime": runtime} for runtime in runtimes]
    return rows


def remeasure(budget: Budget, encoder: nn.Module, decoder: nn.Module) -> float:
    shape = (1, 3, *budget.hw)
    if budget.metric == "params":
        return float(count_parameters(encoder))
    if budget.metric == "macs":
        return float(count_macs(encoder, shape))
    return measure_latency(encoder, None, shape, budget.runtime, threads=budget.threads, repeats=budget.repeats)


def calibration(size: int) -> torch.Tensor:
    """Photos for the sensitivity allocation: scikit-image's, centre-cropped (the data the demo trains on)."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    tensors = []
    for photo in photos:
        t = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
        h, w = t.shape[1:]
        side = min(h, w, size)
        tensors.append(t[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side])
    side = min(t.shape[-1] for t in tensors)
    return torch.stack([t[:, :side, :side] for t in tensors])


def run(names: Sequence[str], runtimes: Sequence[str], threads: int, repeats: int) -> list[dict]:
    rows = []
    for name, (encoder, decoder, side) in pairs(names).items():
        images = calibration(128)
        for target in targets(runtimes):
            budget = Budget(**target, size=side, threads=threads, repeats=repeats)
            start = time.perf_counter()
            try:
                distiller = cdcompress.apply(encoder, decoder, slim=cdcompress.Slimming(target=budget, calibration=images))
            except BudgetError as exc:
                rows.append({"pair": name, "target": budget.describe(), "error": str(exc)})
                continue
            seconds = time.perf_counter() - start
            search = distiller.slimmed.budget
            again = remeasure(budget, distiller.student, distiller.slimmed.decoder)
            rows.append({"pair": name, "target": budget.describe(), "goal": search.goal, "teacher": search.teacher_cost,
                         "predicted": search.predicted, "measured": search.measured, "remeasured": again,
                         "error": again / search.goal - 1, "allocation": search.allocation, "search_s": seconds})
            print(f"{name}: {budget.describe()}: goal {search.goal:,.4g}, re-measured {again:,.4g} "
                  f"({again / search.goal - 1:+.1%}) in {seconds:.0f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| pair | target | teacher | goal | predicted | measured in search | re-measured | error | allocation | "
             "search s |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        if isinstance(r["error"], str):
            lines.append(f"| {r['pair']} | {r['target']} | | | | | | {r['error']} | | |")
            continue
        lines.append(f"| {r['pair']} | {r['target']} | {r['teacher']:,.4g} | {r['goal']:,.4g} | {r['predicted']:,.4g} | "
                     f"{r['measured']:,.4g} | {r['remeasured']:,.4g} | {r['error']:+.1%} | {r['allocation']} | "
                     f"{r['search_s']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=["unet", "wct3"], default=["unet", "wct3"])
    parser.add_argument("--runtimes", nargs="*", choices=["eager", "bundle", "int8", "cuda"],
                        default=["eager", "bundle", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run(args.pairs, args.runtimes, args.threads, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
