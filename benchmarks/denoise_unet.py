"""Second domain: CD vs feature-KD vs prune-only on a GroupNorm / ConvTranspose / skip-concat U-Net denoiser.

The teacher (``cdcompress.models.unet``, widths 32-64-128) is trained here on noisy crops of
scikit-image's photos and ``../shared/images/content`` (cached under ``--out``/teacher), then
compressed by :func:`cdcompress.apply` at each ``--widths`` ratio and ``--seeds`` seed:

* **CD**: stage 2 = embedding loss + the frozen teacher decoder's output on the student's embedded
  features compared with the clean image; then stage 3 (a slimmed decoder trained for the frozen student);
* **feature-KD**: stage 2 with the embedding loss only; the same stage 3;
* **prune-only**: no stage 2; the same stage 3.

Held-out task PSNR on ``../shared/images/style`` (scikit-image's last two photos when ``../shared`` is
absent), parameter and MAC ratios, and measured latency of the exported (ONNX Runtime) and eager
student vs teacher. Prints a Markdown table, writes ``results.json`` under ``--out`` and the
comparison PNG (``docs/images/denoise_comparison.png``; under ``--out`` with ``--quick``).

    python benchmarks/denoise_unet.py                 # the full experiment (~25 min on 2 cores)
    python benchmarks/denoise_unet.py --quick         # smoke run, tiny settings (< 1 min)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import cdcompress
from cdcompress.cost.pair import compare
from cdcompress.cost.static import count_macs
from cdcompress.data.batches import skimage_photos
from cdcompress.data.noisy import DEFAULT_SIGMA, NoisyPairs, Pair
from cdcompress.evaluation.metrics import mean_psnr, psnr
from cdcompress.models.unet import DEFAULT_GROUPS, DEFAULT_WIDTHS, stride_of, unet_decoder, unet_encoder
from cdcompress.surgery.modules import EncoderDecoderPair
from cdcompress.tasks.denoise import heldout_pairs, train_denoiser

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = ROOT.parent / "shared" / "images"
METHODS = {"cd": "CD", "kd": "feature-KD", "prune": "prune-only"}
KD_BETA = 10.0
"""Feature-KD's embedding weight (the paper's): with the embedding loss alone, Adam makes its scale immaterial."""


@dataclass(frozen=True)
class Settings:
    """Everything that decides the numbers (recorded with the results and keyed into the teacher cache)."""

    teacher_steps: int = 1500
    teacher_lr: float = 2e-3
    teacher_batch: int = 16
    steps: int = 300  # stage 2 (CD and KD; prune-only has none)
    decoder_steps: int = 1000  # stage 3, the same for every method (cheap: the student is frozen and small)
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.01, 10.0)  # CD embedding weights, one CD variant each: chosen on validation, paper
    batch: int = 8
    crop: int = 64
    resize: int = 256
    sigma: float = DEFAULT_SIGMA
    eval_size: int = 256
    time_size: int = 512
    repeats: int = 7
    threads: int = 2  # for latency measurements
    train_threads: int = 2  # 1 trains faster than 2 on an oversubscribed machine (OpenMP threads wait on each other)
    widths: tuple[float, ...] = (0.5, 0.25)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)

    def teacher_key(self) -> dict[str, object]:
        keys = ("teacher_steps", "teacher_lr", "teacher_batch", "crop", "resize", "sigma")
        return {"widths": list(DEFAULT_WIDTHS), "groups": DEFAULT_GROUPS, **{k: getattr(self, k) for k in keys}}


QUICK = dict(teacher_steps=40, teacher_batch=4, steps=8, decoder_steps=8, batch=4, crop=32, resize=96, eval_size=64,
             time_size=128, repeats=3, widths=(0.25,), seeds=(0,), betas=(0.01,), train_threads=1)


@dataclass(frozen=True)
class Variant:
    method: str
    beta: float | None  # None: no stage 2
    label: str


def variants(settings: Settings) -> list[Variant]:
    """The methods to compare; CD once per beta, labelled with it when there are several."""
    chosen = []
    for method in settings.methods:
        if method == "cd":
            many = len(settings.betas) > 1
            chosen += [Variant("cd", b, f"CD β={b:g}" if many else "CD") for b in settings.betas]
        else:
            chosen.append(Variant(method, KD_BETA if method == "kd" else None, METHODS[method]))
    return chosen


@dataclass
class Run:
    label: str
    method: str
    beta: float | None
    width: float
    seed: int
    psnr: float  # test photos
    validation_psnr: float
    parameters: int
    macs: int
    seconds: float
    per_photo: list[float] = field(default_factory=list)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data and teacher
@dataclass
class Photos:
    train: list[Path]
    validation: list[Path]  # never trained on; chooses settings such as beta, so the test photos stay unseen
    test: list[Path]
    note: str


def photo_split(workdir: Path) -> Photos:
    """Train on scikit-image's photos but its last two (validation) and ../shared content; test on ../shared style."""
    photos = skimage_photos(workdir / "skimage")
    train, validation = photos[:-2], photos[-2:]
    content, style = sorted((SHARED_IMAGES / "content").glob("*.jpg")), sorted((SHARED_IMAGES / "style").glob("*.jpg"))
    names = ", ".join(p.stem for p in validation)
    if content and style:
        return Photos(train + content, validation, style, f"train: scikit-image x{len(train)} + ../shared/images/content "
                      f"x{len(content)}; validation: scikit-image {names}; test: ../shared/images/style x{len(style)}")
    return Photos(train, validation, validation, f"train: scikit-image x{len(train)}; validation = test: scikit-image "
                  f"{names} (../shared/images absent)")


def training_data(train: Sequence[Path], settings: Settings, seed: int, batch: int | None = None) -> NoisyPairs:
    return NoisyPairs(train, batch_size=batch or settings.batch, resize=settings.resize, crop=settings.crop,
                      sigma=settings.sigma, seed=seed)


def load_or_train_teacher(train: Sequence[Path], settings: Settings, out: Path, retrain: bool) -> tuple[nn.Module, nn.Module]:
    """The cached teacher (a cdcompress model directory) when it was trained with these settings, else a fresh one.

    The cache is the native format, so the bundled recipe uses it as is: ``teacher: {source: model, path: ...}``."""
    path = out / "teacher"
    key = settings.teacher_key()
    if not retrain and (path / "model.json").is_file():
        cached = cdcompress.load(path)  # rebuilt from the registered unet-encoder / unet-decoder names
        if cached.meta.get("teacher_training", {}).get("settings") == key:
            log(f"teacher: cached {path}")
            return cached.encoder().eval(), cached.decoder().eval()
    torch.manual_seed(0)
    encoder, decoder = unet_encoder(), unet_decoder()
    model = EncoderDecoderPair(encoder, decoder)
    history = train_denoiser(model, training_data(train, settings, seed=0, batch=settings.teacher_batch),
                             settings.teacher_steps, settings.teacher_lr,
                             log=lambda step, loss: log(f"teacher step {step}: mse {loss:.5f}"), log_every=250)
    meta = {"name": "unet-denoise-teacher", "teacher_training": {"settings": key, "seconds": round(history.seconds, 1)}}
    cdcompress.save_pair(encoder, decoder, path, example_shape=(1, 3, 64, 64), meta=meta, overwrite=True)
    log(f"teacher: trained {settings.teacher_steps} steps in {history.seconds:.0f} s -> {path}")
    return encoder.eval(), decoder.eval()


# ---------------------------------------------------------------- compression
def compress(variant: Variant, encoder: nn.Module, decoder: nn.Module, width: float, seed: int,
             data: Callable[[], NoisyPairs], settings: Settings) -> tuple[cdcompress.Distiller, nn.Module]:
    """One student pair: slim, stage 2 unless prune-only, then the shared stage-3 decoder training."""
    # Feature-KD has no collaborator term, so no perceptual weight (it takes no options).
    objective, options = ("feature-kd", {}) if variant.method == "kd" else ("reconstruction", {"lambda_p": 0.0})
    example = (torch.rand(1, 3, settings.crop, settings.crop, generator=torch.Generator().manual_seed(seed)),)
    beta = KD_BETA if variant.beta is None else variant.beta  # prune-only: unused
    distiller = cdcompress.apply(encoder, decoder, slim=width, seed=seed, objective=objective, beta=beta,
                                 example_inputs=example, **options)
    if variant.beta is not None:
        distiller.fit(data(), cdcompress.TrainConfig(steps=settings.steps, lr=settings.lr))
    small, _ = distiller.fit_decoder(data(), cdcompress.TrainConfig(steps=settings.decoder_steps, lr=settings.lr),
                                       lambda_p=0.0)
    return distiller, small.eval()


def parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def pair_macs(encoder: nn.Module, decoder: nn.Module, size: int) -> int:
    return count_macs(EncoderDecoderPair(encoder, decoder), (1, 3, size, size))


@torch.no_grad()
def denoised(model: nn.Module, pairs: Sequence[Pair]) -> list[torch.Tensor]:
    """The model's clean estimate of each noisy photo, clamped to [0, 1] as it is saved and scored."""
    return [model(noisy).clamp(0, 1) for noisy, _ in pairs]


# ---------------------------------------------------------------- reporting
def summarise(values: Sequence[float]) -> str:
    mean, spread = statistics.fmean(values), (max(values) - min(values)) / 2
    return f"{mean:.2f} ± {spread:.2f}"


def results_table(runs: list[Run], teacher_psnr: tuple[float, float], noisy_psnr: tuple[float, float],
                  teacher_cost: tuple[int, int],
                  timings: dict[float, dict[str, dict[str, float]]], settings: Settings) -> str:
    params0, macs0 = teacher_cost
    lines = [f"| method | width | test PSNR (dB) | validation PSNR (dB) | params | MACs @{settings.time_size}² "
             f"| ONNX Runtime speed-up @{settings.time_size}² | eager speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| noisy input | | {noisy_psnr[0]:.2f} | {noisy_psnr[1]:.2f} | | | | |",
             f"| teacher | 1 | {teacher_psnr[0]:.2f} | {teacher_psnr[1]:.2f} | {params0:,} | {macs0 / 1e9:.2f} G | 1.00x "
             "| 1.00x |"]
    for width in settings.widths:
        timing = timings.get(width, {})
        ort, eager = (f"{timing[k]['speedup']:.2f}x" if k in timing else "n/a" for k in ("onnxruntime", "torch"))
        for variant in variants(settings):
            group = [r for r in runs if r.width == width and r.label == variant.label]
            if not group:
                continue
            p, m = group[0].parameters, group[0].macs
            lines.append(f"| {variant.label} | {width:g} | {summarise([r.psnr for r in group])} | "
                         f"{summarise([r.validation_psnr for r in group])} | {p:,} ({params0 / p:.1f}x fewer) | "
                         f"{m / 1e9:.2f} G ({macs0 / m:.1f}x fewer) | {ort} | {eager} |")
    return "\n".join(lines)


def comparison_png(path: Path, pairs: list[Pair], names: list[str], columns: dict[str, list[torch.Tensor]]) -> Path:
    """Rows = held-out photos; columns noisy | teacher | methods... | clean, each titled with its PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"noisy": [n for n, _ in pairs], **columns, "clean": [c for _, c in pairs]}
    fig, axes = plt.subplots(len(pairs), len(panels), figsize=(2.2 * len(panels), 2.3 * len(pairs)), squeeze=False)
    for row, ((_, clean), name) in enumerate(zip(pairs, names, strict=True)):
        for col, (label, images) in enumerate(panels.items()):
            ax = axes[row][col]
            ax.imshow(images[row][0].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            score = "" if label == "clean" else f"\n{psnr(images[row], clean):.2f} dB"
            ax.set_title(f"{label}{score}", fontsize=8)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the experiment
def measure_speed(width: float, distiller: cdcompress.Distiller, small: nn.Module, teacher_dir: Path, out: Path,
                  settings: Settings, onnx: bool) -> dict[str, dict[str, float]]:
    """Saved teacher vs saved student, reloaded and timed by the library (eager and, unless ``onnx`` is off, exported)."""
    student_dir = distiller.save_student(out / "models" / f"student-x{width:g}", decoder=small, overwrite=True)
    models = [cdcompress.load(d, encoder=unet_encoder, decoder=unet_decoder) for d in (teacher_dir, student_dir)]
    teacher_row, student_row = compare(*models, (settings.time_size, settings.time_size), repeats=settings.repeats,
                                       threads=settings.threads, onnx=onnx)
    timing = {runtime: {"teacher_ms": 1e3 * teacher_row.seconds[runtime], "student_ms": 1e3 * student_row.seconds[runtime],
                        "speedup": teacher_row.seconds[runtime] / student_row.seconds[runtime]}
              for runtime in teacher_row.seconds}
    log(f"x{width:g} timing: {json.dumps({k: {n: round(v, 2) for n, v in d.items()} for k, d in timing.items()})}")
    torch.set_num_threads(settings.train_threads)  # compare() set the timing thread count
    return timing


def run_experiment(settings: Settings, out: Path, png: Path, results: Path, retrain: bool, onnx: bool) -> str:
    torch.set_num_threads(settings.train_threads)
    started = time.perf_counter()
    photos = photo_split(out)
    train, held_out = photos.train, photos.test
    pairs, validation = (heldout_pairs(paths, size=settings.eval_size, multiple=stride_of(DEFAULT_WIDTHS), sigma=settings.sigma)
                         for paths in (photos.test, photos.validation))
    teacher = load_or_train_teacher(train, settings, out, retrain)
    teacher_model = EncoderDecoderPair(*teacher)
    noisy_psnr, teacher_psnr = ((mean_psnr(m, pairs), mean_psnr(m, validation)) for m in (None, teacher_model))
    log(f"{photos.note}\nPSNR test / validation: noisy {noisy_psnr[0]:.2f} / {noisy_psnr[1]:.2f} dB, "
        f"teacher {teacher_psnr[0]:.2f} / {teacher_psnr[1]:.2f} dB")
    teacher_cost = (parameters(*teacher), pair_macs(*teacher, settings.time_size))
    teacher_dir = out / "teacher"  # the cached teacher is already a model directory

    runs: list[Run] = []
    timings: dict[float, dict[str, dict[str, float]]] = {}
    figure: dict[str, list[torch.Tensor]] = {"teacher": denoised(teacher_model, pairs)}
    for width in settings.widths:
        for seed in settings.seeds:
            for index, variant in enumerate(variants(settings)):
                start = time.perf_counter()
                distiller, small = compress(variant, *teacher, width, seed, lambda s=seed: training_data(train, settings, s),
                                            settings)
                student = EncoderDecoderPair(distiller.deployable(), small)
                scores = [mean_psnr(student, [pair]) for pair in pairs]
                run = Run(variant.label, variant.method, variant.beta, width, seed, statistics.fmean(scores),
                          mean_psnr(student, validation), parameters(student),
                          pair_macs(distiller.deployable(), small, settings.time_size), time.perf_counter() - start, scores)
                runs.append(run)
                log(f"{variant.label} x{width:g} seed {seed}: test {run.psnr:.2f} dB, validation {run.validation_psnr:.2f} dB "
                    f"({run.seconds:.0f} s)")
                if width == settings.widths[-1] and seed == settings.seeds[0]:
                    figure[variant.label] = denoised(student, pairs)
                if seed == settings.seeds[0] and index == 0:
                    timings[width] = measure_speed(width, distiller, small, teacher_dir, out, settings, onnx)

    table = results_table(runs, teacher_psnr, noisy_psnr, teacher_cost, timings, settings)
    comparison_png(png, pairs, [p.stem for p in held_out], figure)
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
              "python": platform.python_version(), "torch": torch.__version__, "split": photos.note,
              "settings": asdict(settings), "noisy_psnr": noisy_psnr, "teacher_psnr": teacher_psnr,
              "teacher_cost": teacher_cost, "runs": [asdict(r) for r in runs], "timings": timings,
              "minutes": (time.perf_counter() - started) / 60, "table": table, "png": str(png)}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(record, indent=1))
    log(f"done in {record['minutes']:.1f} min; figure {png}; results {results}")
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default runs/denoise, runs/denoise-quick)")
    parser.add_argument("--png", type=Path, default=None, help="comparison figure (default docs/images/denoise_comparison.png)")
    parser.add_argument("--results", type=Path, default=None, help="results JSON (default OUT/results.json)")
    parser.add_argument("--widths", type=float, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS))
    parser.add_argument("--steps", type=int, help="stage-2 steps (CD, KD)")
    parser.add_argument("--decoder-steps", type=int, help="stage-3 steps (every method)")
    parser.add_argument("--teacher-steps", type=int)
    parser.add_argument("--betas", type=float, nargs="+", help="CD's embedding-loss weight(s) (paper: 10)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--threads", type=int, help="threads for latency measurements (default 2)")
    parser.add_argument("--train-threads", type=int, help="torch threads for training (default 2)")
    parser.add_argument("--no-onnx", action="store_true", help="skip export and ONNX Runtime timing")
    parser.add_argument("--retrain-teacher", action="store_true")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The defaults (or ``--quick``'s), overridden by every option given that names a setting."""
    base = asdict(Settings(**QUICK) if args.quick else Settings())
    given = {name: getattr(args, name) for name in base if getattr(args, name, None) is not None}
    return Settings(**{**base, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}})


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from(args)
    out = args.out or ROOT / ("runs/denoise-quick" if args.quick else "runs/denoise")
    png = args.png or (out / "denoise_comparison.png" if args.quick else ROOT / "docs/images/denoise_comparison.png")
    print(run_experiment(settings, out, png, args.results or out / "results.json", args.retrain_teacher, onnx=not args.no_onnx))


if __name__ == "__main__":
    main()
