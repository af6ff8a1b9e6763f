"""``cdcompress quantize``: fine-tune a float model for INT8 with its collaborator in the loop (QAT), then gate it."""

from __future__ import annotations

from pathlib import Path

import click

from .options import parse_levels


@click.command()
@click.argument("model")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Model directory to write.")
@click.option("--data", "train", type=click.Path(path_type=Path), multiple=True,
              help="Training photos (folder or file; repeatable) [default: scikit-image's photos].")
@click.option("--held-out", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of photos the gate judges, disjoint in content from --data [default: scikit-image's pair].")
@click.option("--levels", help="Levels to fine-tune, e.g. 1-5 [default: every level of MODEL].")
@click.option("--encoder-steps", type=click.IntRange(min=0), default=300, show_default=True,
              help="Stage 2: INT8 encoder through the frozen float decoder.")
@click.option("--decoder-steps", type=click.IntRange(min=0), default=300, show_default=True,
              help="Stage 3: INT8 decoder on the INT8 encoder.")
@click.option("--batch", type=click.IntRange(min=2), default=4, show_default=True)
@click.option("--crop", type=click.IntRange(min=16), default=128, show_default=True)
@click.option("--resize", type=click.IntRange(min=16), default=160, show_default=True, help="Shorter side before cropping.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True)
@click.option("--beta", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Weight of the feature MSE against the float encoder (relative to the features' power).")
@click.option("--wct-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Stage 3: weight of the MSE against the float pair's WCT result.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quantize"),
              show_default=True, help="Checkpoints, metrics.jsonl and samples, one folder per level.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoints in --run-dir.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing --out directory.")
def quantize(model: str, out: Path, train: tuple[Path, ...], held_out: Path | None, levels: str | None,
             encoder_steps: int, decoder_steps: int, batch: int, crop: int, resize: int, lr: float, beta: float,
             wct_weight: float, seed: int, run_dir: Path, resume: bool, device: str, force: bool) -> None:
    """Fine-tune MODEL for INT8 (quantization-aware, collaborator in the loop) and measure its INT8 graphs."""
    from ..distill.quantize import QuantizeSettings, write_quantized
    from ..models.resolve import resolve_model
    from ..tasks.teacher import teacher_photos

    loaded, _ = resolve_model(model)
    settings = QuantizeSettings(levels=parse_levels(levels) if levels else (), encoder_steps=encoder_steps,
                                decoder_steps=decoder_steps, batch=batch, crop=crop, resize=resize, lr=lr, beta=beta,
                                wct_weight=wct_weight, seed=seed, device=device)
    train_paths, held_out_paths = teacher_photos(train, (held_out,) if held_out else (), run_dir)
    _, result = write_quantized(loaded, train_paths, held_out_paths, settings, out, held_out_folder=held_out,
                                run_dir=run_dir, resume=resume, overwrite=force, source=model, echo=click.echo)
    int8 = result.manifest["int8_levels"] if result is not None else []
    click.echo(f"wrote {out}; its INT8 graphs pass the gate at level(s) {','.join(map(str, int8)) or 'none'} against "
               f"{model}; export with `cdcompress export {out} --int8 --reference {model}`")
