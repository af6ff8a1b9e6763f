"""Static cost of models: parameters, bytes on disk and multiply-accumulates.

MACs are counted with torch's own FLOP counter on the ``meta`` device, so no arithmetic is
done and even a 16k-pixel input costs nothing to measure.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.format import CDModel, read_spec
from ..surgery.modules import EncoderDecoderPair, count_parameters


@dataclass
class PartCost:
    part: str
    level: int
    parameters: int
    bytes: int | None
    macs: int | None
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape`` (FLOPs / 2, as torch counts 2 per MAC)."""
    meta = copy.deepcopy(module).to("meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(input_shape, device="meta"))
    return counter.get_total_flops() // 2


def _file_sizes(model_dir: Path | None) -> dict[tuple[str, int], int]:
    if model_dir is None:
        return {}
    sizes = {}
    for entry in read_spec(model_dir)["parts"]:
        sizes[(entry["role"], int(entry["level"]))] = (model_dir / entry["file"]).stat().st_size
    return sizes


def model_costs(model: CDModel, size: tuple[int, int] = (512, 512), model_dir: Path | None = None) -> list[PartCost]:
    """One row per encoder/decoder per usable level, then the embedding branches."""
    h, w = size
    sizes = _file_sizes(model_dir)
    rows: list[PartCost] = []
    levels = sorted(set(model.levels) | set(model.encoders))
    for level in levels:
        encoder = model.encoder(level)
        note = "" if level in model.encoders else f"cut from encoder {min(k for k in model.encoders if k > level)}"
        image = (1, model.image_channels, h, w)
        encoder_macs = count_macs(encoder, image)
        rows.append(PartCost("encoder", level, count_parameters(encoder), sizes.get(("encoder", level)), encoder_macs, note))
        if level in model.decoders:
            decoder = model.decoder(level)
            # Counted through the pair, so any encoder output structure (tuples of skips, dicts) just works.
            decoder_macs = count_macs(EncoderDecoderPair(encoder, decoder), image) - encoder_macs
            rows.append(PartCost("decoder", level, count_parameters(decoder), sizes.get(("decoder", level)), decoder_macs))
    for level in sorted(model.branches):
        branches = model.branches[level]
        taps = ", ".join(f"{t} {i}->{o}" for t, (i, o) in branches.widths.items())
        with_encoder = count_parameters(branches) + count_parameters(model.encoders[level]) if level in model.encoders else None
        total = f"; encoder+branches {with_encoder:,}" if with_encoder else ""
        rows.append(PartCost("branches", level, count_parameters(branches), sizes.get(("branches", level)), None,
                             f"training only: {taps}{total}"))
    return rows


def format_table(rows: list[PartCost], size: tuple[int, int]) -> str:
    """A Markdown table of :func:`model_costs` rows."""
    head = f"| part | level | parameters | bytes on disk | GMACs @ {size[0]}x{size[1]} | note |"
    lines = [head, "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        size_txt = f"{r.bytes:,}" if r.bytes is not None else "-"
        macs_txt = f"{r.macs / 1e9:,.3f}" if r.macs is not None else "-"
        lines.append(f"| {r.part} | {r.level} | {r.parameters:,} | {size_txt} | {macs_txt} | {r.note} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- stylization cost

#: Style images for cost measurements are this square size; kept small so that the content image,
#: not the style, sets the peak at every probed size (peak-RSS fits need the content to dominate).
COST_STYLE_SIZE = 256
#: Square sides are kept multiples of this (the level-5 stride), as the tiler aligns them anyway.
SIDE_ALIGN = 16


@dataclass
class StylizeCost:
    """Static cost of a multi-level stylization with one model (what ``eval cost`` reports first)."""

    levels: list[int]
    parameters: int  # unique stored parameters of the encoders and decoders the levels use
    encoder_parameters_per_level: int  # the paper's convention: one encoder per level, summed
    bytes_on_disk: int | None
    size: int
    encoder_macs: int  # encoders of all levels at size x size (the paper's GFLOPs convention)
    macs: int  # the whole cascade: encoder and decoder per level at size x size (style not included)

    def as_dict(self) -> dict:
        return asdict(self)


def _encoder_sources(model: CDModel, levels: list[int]) -> list[int]:
    """Stored encoders that ``levels`` use: each level's own, or the deeper one it is cut from."""
    return sorted({min(k for k in model.encoders if k >= level) for level in levels})


def _used_modules(model: CDModel, levels: list[int]) -> list[nn.Module]:
    return [*(model.encoders[s] for s in _encoder_sources(model, levels)), *(model.decoder(k) for k in levels)]


def _stored_bytes(model: CDModel, model_dir: Path | None, levels: list[int]) -> int:
    """Bytes of the used parts on disk; built-ins (no directory) are saved to a temporary one to measure."""
    if model_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            trimmed = CDModel(model.family, dict(model.encoders), {k: model.decoders[k] for k in levels})
            return _stored_bytes(trimmed, trimmed.save(Path(tmp) / "model"), levels)
    sizes = _file_sizes(model_dir)
    return sum(sizes[("encoder", s)] for s in _encoder_sources(model, levels)) + sum(sizes[("decoder", k)] for k in levels)


def stylize_cost(model: CDModel, levels: list[int], size: int, model_dir: Path | None = None) -> StylizeCost:
    """Parameters, bytes and MACs of a cascade over ``levels`` on a ``size`` x ``size`` content image."""
    shape = (1, 3, size, size)
    encoder_macs = sum(count_macs(model.encoder(k), shape) for k in levels)
    decoder_macs = 0
    for k in levels:
        decoder = model.decoder(k)
        stride = 2 ** (k - 1)
        decoder_macs += count_macs(decoder, (1, decoder.spec.widths[-1], size // stride, size // stride))
    return StylizeCost(
        levels=list(levels),
        parameters=sum(count_parameters(m) for m in _used_modules(model, list(levels))),
        encoder_parameters_per_level=sum(count_parameters(model.encoder(k)) for k in levels),
        bytes_on_disk=_stored_bytes(model, model_dir, list(levels)),
        size=size,
        encoder_macs=encoder_macs,
        macs=encoder_macs + decoder_macs,
    )
