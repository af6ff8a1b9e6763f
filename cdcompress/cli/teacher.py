"""``cdcompress train-teacher``: train a VGG-19-topology teacher (encoder + one decoder per level) from scratch."""

from __future__ import annotations

from pathlib import Path

import click

from .options import parse_levels


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model directory to write.")
@click.option("--data", "train", type=click.Path(path_type=Path), multiple=True,
              help="Training photos (folder or file; repeatable) [default: scikit-image's photos].")
@click.option("--held-out", type=click.Path(path_type=Path), multiple=True,
              help="Held-out photos, disjoint in content from --data [default: scikit-image's held-out pair].")
@click.option("--levels", default="1-3", show_default=True, help="Cut levels to train decoders for (e.g. 1-3).")
@click.option("--steps", type=click.IntRange(min=1), default=1500, show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--crop", type=click.IntRange(min=16), default=128, show_default=True)
@click.option("--resize", type=click.IntRange(min=16), default=160, show_default=True, help="Shorter side before cropping.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--half", is_flag=True, help="Store float16 weights (half the bytes; the held-out PSNR is re-measured).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/teacher"),
              show_default=True, help="Checkpoints, metrics.jsonl, samples and heldout.png.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --run-dir.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
def train_teacher(out: Path, train: tuple[Path, ...], held_out: tuple[Path, ...], levels: str, steps: int, batch: int,
                  crop: int, resize: int, lr: float, seed: int, half: bool, run_dir: Path, resume: bool, device: str,
                  force: bool) -> None:
    """Train a VGG-19-topology teacher from scratch on photos: one encoder, a decoder per level, pixel MSE."""
    from ..tasks.teacher import TeacherSettings, teacher_photos, write_teacher

    settings = TeacherSettings(levels=parse_levels(levels), steps=steps, batch=batch, crop=crop, resize=resize, lr=lr,
                               seed=seed, device=device)
    train_paths, held_out_paths = teacher_photos(train, held_out, run_dir)
    model = write_teacher(train_paths, held_out_paths, settings, out, run_dir=run_dir, resume=resume, half=half,
                          overwrite=force)
    scores = ", ".join(f"level {k} {v:.2f} dB" for k, v in model.meta["source"]["held_out_psnr"].items())
    click.echo(f"teacher written to {out}; held-out PSNR ({len(held_out_paths)} photos): {scores}")
