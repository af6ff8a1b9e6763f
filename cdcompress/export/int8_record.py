"""The INT8 record a model directory carries after quantization-aware training (``model.json`` key ``int8``).

Per level: the activation ranges its encoder and decoder trained with (:mod:`cdcompress.surgery.fake_quant` names the
points) and digests of the weights they belong to: the exporter must quantize with exactly these ranges, and only for
exactly these weights, or the INT8 graph is not the network that was trained.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..core.errors import CDCompressError
from ..models.format import CDModel
from ..surgery import fake_quant
from .bundle import parameters_sha256

#: Where a model directory keeps its trained INT8 scheme (``model.json``).
META_KEY = "int8"
SCHEME = "onnxruntime-qdq: per-channel symmetric int8 weights, per-tensor uint8 activations, pixel convs float"


def level_record(encoder: nn.Module, decoder: nn.Module, ranges: dict[str, fake_quant.Ranges]) -> dict[str, Any]:
    """One level's entry under ``model.json``'s ``int8``: the ranges and the digests of the weights they belong to."""
    return {**{role: {p: list(r) for p, r in found.items()} for role, found in ranges.items()},
            "weights_sha256": {"encoder": parameters_sha256(encoder), "decoder": parameters_sha256(decoder)}}


def with_trained_ranges(model: CDModel, how: str) -> CDModel:
    """A saveable copy of a model whose pairs train fake-quantized: float weights, and the ranges in ``meta["int8"]``
    (``how`` says which training made them)."""
    result = CDModel(family=model.family, encoders={}, decoders={}, branches=dict(model.branches),
                     meta=copy.deepcopy(model.meta))
    record: dict[str, Any] = {"scheme": SCHEME, "levels": {}, "training": {"how": how}}
    for level in sorted(set(model.encoders) | set(model.decoders)):
        parts = {role: copy.deepcopy(table[level]) for role, table in (("encoder", model.encoders),
                                                                       ("decoder", model.decoders)) if level in table}
        ranges = {role: fake_quant.detach_fake_quant(part) for role, part in parts.items()
                  if fake_quant.is_fake_quantized(part)}
        result.encoders.update({level: parts["encoder"]} if "encoder" in parts else {})
        result.decoders.update({level: parts["decoder"]} if "decoder" in parts else {})
        if len(ranges) == 2:
            record["levels"][str(level)] = level_record(parts["encoder"], parts["decoder"], ranges)
    if record["levels"]:
        result.meta[META_KEY] = record
    return result


def trained_ranges(model: CDModel, levels: Sequence[int] | None = None) -> dict[int, dict[str, fake_quant.Ranges]]:
    """The per-level activation ranges a quantization-aware model carries (``{}`` for a float model), checked
    against the weights they were trained with: ranges of other weights would round a different network."""
    record = model.meta.get(META_KEY)
    if record is None:
        return {}
    try:
        found = {int(level): {role: {p: (float(r[0]), float(r[1])) for p, r in entry[role].items()}
                              for role in ("encoder", "decoder")}
                 for level, entry in record["levels"].items()}
        digests = {int(level): entry.get("weights_sha256") for level, entry in record["levels"].items()}
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise CDCompressError(f"model.json: its '{META_KEY}' record is malformed; re-run `cdcompress quantize` "
                              "or remove the record to quantize after training") from None
    wanted = [k for k in (levels if levels is not None else found) if k in found]
    for level in wanted:
        current = {"encoder": parameters_sha256(model.encoder(level)), "decoder": parameters_sha256(model.decoder(level))}
        if digests[level] is not None and digests[level] != current:
            raise CDCompressError(f"level {level}'s weights changed after its INT8 ranges were trained; re-run "
                                  "`cdcompress quantize` on this model (or remove the 'int8' record from model.json)")
    return {k: found[k] for k in wanted}


def fine_tuned_from(model: CDModel) -> str | None:
    """The model a ``cdcompress quantize`` result was fine-tuned from, as it was named (a path or a built-in)."""
    record = model.meta.get(META_KEY)
    training = record.get("training") if isinstance(record, dict) else None
    source = training.get("source") if isinstance(training, dict) else None
    return source if isinstance(source, str) and source else None


__all__ = ["META_KEY", "SCHEME", "fine_tuned_from", "level_record", "trained_ranges", "with_trained_ranges"]
