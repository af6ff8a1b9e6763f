"""Each stage of the WCT reproduction judged alone against the paper's released 16x students (levels 1-3).

- Start: do our L1 slimming's kept filters agree with the released pruned starts ``e{k}_base`` / ``d{k}_base``?
- Stage 2: the released SE{k} with its trained embedding branch, decoded by the frozen WCT teacher decoder
  (``D(Q·SE(x))``), beside our students' stage-2 figure (the same collaborator decoding our Q·F').
- Stage 3: our stage 3 trained for the released SE{k} (frozen, decoder from ``d{k}_base``) against SD{k}: with a
  good encoder, a shortfall is stage 3's.
- Level 1: the least-squares linear decoder of each encoder's features (:mod:`cdcompress.evaluation.ceiling`), the most any
  level-1 decoder can reach from them.

One protocol for every number: held-out ``../shared/images/style`` photos, shorter side 256, cropped to a multiple
of 16 (the recipe ``wct_vgg19_cpu``'s eval set), PSNR of the clamped output. Writes ``results.json`` and
``tables.md`` under ``--out``.

    python benchmarks/stage_references.py [--levels 1 2 3] [--decoder-steps 1500] [--students L1=runs/x/student ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdcompress.data.batches import CropSampler
from cdcompress.distill.decoder import starting_decoder, train_decoder
from cdcompress.distill.distiller import Distiller
from cdcompress.distill.recipe import load_recipe
from cdcompress.distill.run import RecipeRun, data_paths, eval_images
from cdcompress.distill.stages import DistillStage, LevelState
from cdcompress.distill.teachers import load_teacher
from cdcompress.distill.trainer import TrainConfig
from cdcompress.evaluation.ceiling import linear_ceiling, refit_output_conv
from cdcompress.evaluation.metrics import reconstruction_psnr
from cdcompress.models import convert_cd_release, load
from cdcompress.models.checkpoint import read_state_dict
from cdcompress.models.vgg import VGGDecoder, conv_names

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RELEASE_DIR = SHARED / "reference" / "cd16x"
RECIPE = "wct_vgg19_cpu"  # its eval protocol, training photos and stage-3 settings are the study's


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def release_references(level: int, teacher_encoder: nn.Module, teacher_decoder: nn.Module,
                       images: list[torch.Tensor]) -> dict[str, float]:
    """The bars every stage is judged against: the teacher pair, SE{k}/SD{k}, and the teacher's decoder reading
    the released Q·SE{k} (stage 2's reference)."""
    released = convert_cd_release(RELEASE_DIR, levels=(level,))
    branch = released.branches[level][f"relu{level}_1"]
    teacher_encoder, teacher_decoder = teacher_encoder.eval(), teacher_decoder.eval()
    return {"teacher": reconstruction_psnr(teacher_encoder, teacher_decoder, images),
            "released": reconstruction_psnr(released.encoder(level), released.decoder(level), images),
            "released_stage2": reconstruction_psnr(released.encoder(level), lambda f: teacher_decoder(branch(f)), images)}


# ---------------------------------------------------------------- the start: kept filters
def nearest_rows(full: torch.Tensor, part: torch.Tensor) -> tuple[list[int], float]:
    """Which row of ``full`` each row of ``part`` is, and the worst distance (0: an exact slice)."""
    distances = torch.cdist(part.flatten(1).double(), full.flatten(1).double())
    return distances.argmin(1).tolist(), float(distances.min(1).values.max())


def kept_filter_agreement(level: int, kept: dict[str, list[int]], teacher: LevelState) -> list[dict[str, Any]]:
    """Per conv: the teacher filters ``e{k}_base``/``d{k}_base`` kept (matched row by row) against ours."""
    rows = []
    parts = (("encoder", teacher.teacher.encoder, f"e{level}_base.pth", conv_names(level)),
             ("decoder", teacher.collaborator, f"d{level}_base.pth", list(reversed(conv_names(level)))))
    inputs = list(range(3))
    for side, module, filename, order in parts:
        theirs_state, ours_state = read_state_dict(RELEASE_DIR / filename), module.state_dict()
        for name in order:
            weight = ours_state[f"{name}.weight"]
            theirs, distance = nearest_rows(weight[:, inputs], theirs_state[f"{name}.weight"])
            ours = kept.get(f"{side}.{name}", list(range(weight.shape[0])))
            rows.append({"part": side, "conv": name, "kept": len(theirs), "agree": len(set(theirs) & set(ours)),
                         "slice_distance": distance})
            inputs = theirs
    return rows


# ---------------------------------------------------------------- stage 3 for the released encoder
def stage3_from(distiller: Distiller, encoder: nn.Module, branches: nn.Module, recipe: Any, train: list[Path],
                images: list[torch.Tensor], steps: int, seed: int,
                starts: tuple[str, ...] = ("folded", "d_base")) -> dict[str, Any]:
    """Our stage 3 (the recipe's settings, pixel loss) for a frozen ``encoder`` with trained ``branches``, from
    ours start (``folded``: the slimmed WCT decoder with the output branch folded in) and/or the authors'
    (``d_base``: ``d{k}_base``, its final ReLU left out as our decoders have none); then the output refit."""
    level = encoder.spec.level
    distiller.student.load_state_dict(encoder.state_dict())
    distiller.branches.load_state_dict(branches.state_dict())
    stage = recipe.stages.decoder
    config = TrainConfig(steps=steps, lr=stage.lr, schedule=stage.schedule, log_every=10 ** 9,
                         eval_every=max(1, steps // 10))
    makers = {"folded": lambda: starting_decoder(distiller.decoder_start(), "folded"),
              "d_base": lambda: linear_output(convert_cd_release(RELEASE_DIR, variant="base", levels=(level,))
                                              .decoder(level))}
    encoder = encoder.eval()
    out: dict[str, Any] = {"steps": steps, "lr": stage.lr, "schedule": stage.schedule}
    for name in starts:
        decoder = makers[name]()
        sampler = CropSampler(train, batch_size=stage.batch, resize=recipe.data.resize, crop=recipe.data.crop,
                              seed=seed * 1000 + 4)
        start = reconstruction_psnr(encoder, decoder.eval(), images)
        started = time.perf_counter()
        result = train_decoder(f"stage3_L{level}_{name}", encoder, decoder, sampler, config, lambda_p=0.0,
                               held_out=images)
        trained = reconstruction_psnr(encoder, decoder.eval(), images)
        dead = dead_channels(encoder, decoder, images)
        refit_output_conv(encoder, decoder, [sampler[10 ** 6 + i] for i in range(-(-64 // stage.batch))])
        out[name] = {"start": start, "trained": trained, "refit": reconstruction_psnr(encoder, decoder, images),
                     "dead_channels": dead,
                     "seconds": round(time.perf_counter() - started, 1),
                     "curve": [(p["step"], p["heldout/psnr"]) for p in result.curve]}
    return out


@torch.no_grad()
def dead_channels(encoder: nn.Module, decoder: nn.Module, images: list[torch.Tensor]) -> tuple[int, int]:
    """(channels, of all the decoder's ReLU channels) that output zero on every pixel of every held-out image: a
    channel dead everywhere passes no gradient and never recovers."""
    alive: dict[str, torch.Tensor] = {}
    relus = {name: m for name, m in decoder.named_modules() if isinstance(m, nn.ReLU)}
    hooks = [m.register_forward_hook(lambda _m, _a, out, n=name: alive.__setitem__(
        n, alive.get(n, torch.zeros(out.shape[1], dtype=torch.bool)) | (out.amax((0, 2, 3)) > 0)))
        for name, m in relus.items()]
    try:
        for x in images:
            decoder(encoder(x))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(int((~a).sum()) for a in alive.values()), sum(a.numel() for a in alive.values())


def linear_output(decoder: VGGDecoder) -> VGGDecoder:
    """``decoder``'s weights without the ReLU after its RGB conv, as our stage 3 trains (the slimmed WCT decoder
    has none): at stage 3's learning rate a final ReLU can die and leave a black image for good (measured here:
    SE1 with d1_base as released, ReLU kept, ended at 4.57 dB after 1500 steps)."""
    if not decoder.spec.output_relu:
        return decoder
    linear = VGGDecoder(replace(decoder.spec, output_relu=False))
    linear.load_state_dict(decoder.state_dict())
    return linear


# ---------------------------------------------------------------- the study
def level_study(level: int, args: argparse.Namespace) -> dict[str, Any]:
    recipe = load_recipe(RECIPE, [f"levels=[{level}]", f"seed={args.seed}", *args.sets])
    run = RecipeRun(recipe, args.out / "scratch")
    images = [image for _, image in eval_images(recipe, args.out / "scratch")]
    state = LevelState(level, load_teacher(recipe.teacher, level))
    state.collaborator = state.teacher.decoder
    released = convert_cd_release(RELEASE_DIR, levels=(level,))
    out: dict[str, Any] = release_references(level, state.teacher.encoder, state.collaborator, images)
    distiller = DistillStage().prepare(run, state)
    out["kept_filters"] = kept_filter_agreement(level, distiller.slimmed.kept, state)
    log(f"level {level}: teacher {out['teacher']:.2f}, released {out['released']:.2f}, released stage 2 "
        f"{out['released_stage2']:.2f} dB")
    train = data_paths(recipe.data.train, args.out / "scratch")
    if args.decoder_steps:
        s3 = out["released_stage3"] = stage3_from(distiller, released.encoder(level), released.branches[level], recipe,
                                                  train, images, args.decoder_steps, args.seed)
        log(f"level {level}: our stage 3 for SE{level}: folded start {s3['folded']['trained']:.2f} dB, d_base start "
            f"{s3['d_base']['trained']:.2f} dB (SD{level} {out['released']:.2f})")
    if level == 1:
        out["linear_ceiling"] = linear_ceilings(train, images, args)
    return out


def linear_ceilings(train: list[Path], images: list[torch.Tensor], args: argparse.Namespace) -> dict[str, float]:
    """Level 1: the best linear decoder's PSNR for the teacher, SE1, e1_base and each student given."""
    sampler = CropSampler(train, batch_size=8, resize=300, crop=256, seed=4242)
    batches = [sampler[i] for i in range(args.ceiling_batches)]
    teacher = load_teacher(load_recipe(RECIPE, []).teacher, 1)
    released = convert_cd_release(RELEASE_DIR, levels=(1,))
    base = convert_cd_release(RELEASE_DIR, variant="base", levels=(1,))
    pairs = {"teacher (WCT VGG-19 relu1_1)": (teacher.encoder, teacher.decoder),
             "released SE1": (released.encoder(1), linear_output(released.decoder(1))),
             "e1_base (L1-pruned start)": (base.encoder(1), linear_output(base.decoder(1)))}
    for name, path in student_dirs(args.students).items():
        model = load(path)
        pairs[name] = (model.encoder(1), linear_output(model.decoder(1)))
    result = {}
    for name, (encoder, decoder) in pairs.items():
        result[name] = linear_ceiling(encoder.eval(), decoder, batches, images)
        log(f"level 1 linear ceiling, {name}: {result[name]:.2f} dB")
    return result


def student_dirs(entries: list[str]) -> dict[str, Path]:
    return {name: Path(path) for name, _, path in (e.partition("=") for e in entries)}


# ---------------------------------------------------------------- tables
def tables(results: dict[str, Any]) -> str:
    levels = results["levels"]
    lines = ["| level | teacher | released SE/SD | released stage 2: D_teacher(Q·SE) | our stage 3 for SE, folded start "
             "(start → trained → output refit) | from d_base (start → trained → refit) |", "|---:|---:|---:|---:|---|---|"]
    for level, r in levels.items():
        s3 = r.get("released_stage3")
        cells = [" → ".join(f"{s3[k][p]:.2f}" for p in ("start", "trained", "refit"))
                 + (f" ({s3[k]['dead_channels'][0]}/{s3[k]['dead_channels'][1]} dead)" if "dead_channels" in s3[k] else "")
                 if s3 else "n/a" for k in ("folded", "d_base")]
        lines.append(f"| {level} | {r['teacher']:.2f} | {r['released']:.2f} | {r['released_stage2']:.2f} | "
                     f"{cells[0]} | {cells[1]} |")
    lines += ["", "| level | part | conv | kept | same filters as the release | release a slice of the teacher? |",
              "|---:|---|---|---:|---:|---|"]
    for level, r in levels.items():
        for row in r["kept_filters"]:
            exact = "yes" if row["slice_distance"] < 1e-6 else f"no (nearest row {row['slice_distance']:.2f} away)"
            lines.append(f"| {level} | {row['part']} | {row['conv']} | {row['kept']} | {row['agree']} | {exact} |")
    ceiling = levels.get("1", {}).get("linear_ceiling")
    if ceiling:
        lines += ["", "| level-1 encoder | best linear decoder (dB) |", "|---|---:|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in ceiling.items()]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--decoder-steps", type=int, default=1500, help="our stage 3 for SE{k} (0: skip)")
    parser.add_argument("--ceiling-batches", type=int, default=4, help="level-1 least-squares fit: batches of 8 crops")
    parser.add_argument("--students", nargs="*", default=[], help="NAME=model_dir of level-1 students to add to the "
                                                                   "linear-ceiling table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override for stage 3, e.g. "
                                                                                 "stages.decoder.lr=1e-3")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "stage_references")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if not RELEASE_DIR.is_dir():
        raise SystemExit(f"needs {RELEASE_DIR} and the WCT teacher (../shared from the project root)")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/stage_references.py " + " ".join(argv),
               "threads": torch.get_num_threads(), "levels": {str(k): level_study(k, args) for k in args.levels}}
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = tables(results)
    (args.out / "tables.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
