"""Static cost of models: parameters, bytes on disk and multiply-accumulates.

MACs are counted with torch's own FLOP counter on the ``meta`` device, so no arithmetic is
done and even a 16k-pixel input costs nothing to measure.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models.format import CDModel, read_spec
from .models.vgg import count_parameters


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
        stride = 2 ** (level - 1)
        rows.append(PartCost("encoder", level, count_parameters(encoder), sizes.get(("encoder", level)),
                             count_macs(encoder, (1, 3, h, w)), note))
        if level in model.decoders:
            decoder = model.decoder(level)
            feat_shape = (1, decoder.spec.widths[-1], h // stride, w // stride)
            rows.append(PartCost("decoder", level, count_parameters(decoder), sizes.get(("decoder", level)),
                                 count_macs(decoder, feat_shape)))
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
