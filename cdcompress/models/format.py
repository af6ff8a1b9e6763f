"""The native model format: a directory with ``model.json`` (the spec) and safetensors weights.

A :class:`CDModel` is a set of encoders and decoders indexed by cut level (the paper trains one
encoder/decoder pair per level) plus optional training-only embedding branches. Loading rebuilds
every module from the JSON spec and fills it from safetensors, so nothing is ever unpickled;
each weights file carries a SHA-256 in the spec and a mismatch is reported as corruption.

Family ``vgg`` describes its modules completely in JSON. Family ``module`` holds any other
encoder-decoder pair as one level (1): the file records widths and, at most, the *name* of a registered
factory; the architecture comes from the caller (see :mod:`cdcompress.models.pair`).

A drop-in student (:mod:`cdcompress.surgery.drop_in`) is saved as its plain encoder plus an ``embedding`` part
(its output maps Q, widths in JSON); loading wraps the rebuilt encoder in a ``DropInEncoder``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..core.atomic import recover, staged_directory, write_json
from ..core.digest import sha256_file
from ..core.errors import CheckpointError, ModelFormatError, short_repr
from ..surgery.drop_in import DropInEncoder
from ..surgery.embed import EmbeddingBranches, io_channels
from ..surgery.modules import count_parameters
from .checkpoint import load_weights, read_state_dict
from .pair import MODULE_FAMILY, Factory, architecture_record, rebuild
from .vgg import VGGDecoder, VGGEncoder, VGGSpec

FORMAT_NAME = "cdcompress-model"
FORMAT_VERSION = 1
SPEC_FILE = "model.json"


@dataclass(frozen=True)
class Family:
    """How to build one architecture family's modules from a spec dict."""

    spec_from_dict: Any
    encoder: type[nn.Module]
    decoder: type[nn.Module]


FAMILIES: dict[str, Family] = {"vgg": Family(VGGSpec.from_dict, VGGEncoder, VGGDecoder)}


@dataclass
class CDModel:
    """Encoders/decoders per cut level, with the embedding branches that trained them (if any)."""

    family: str = "vgg"
    encoders: dict[int, nn.Module] = field(default_factory=dict)
    decoders: dict[int, nn.Module] = field(default_factory=dict)
    branches: dict[int, EmbeddingBranches] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    _cuts: dict[tuple[int, int], nn.Module] = field(default_factory=dict, repr=False, compare=False)

    @property
    def levels(self) -> list[int]:
        """Levels usable end to end (an encoder, exact or cut from a deeper one, and a decoder)."""
        return usable_levels(self.encoders, self.decoders)

    @property
    def image_channels(self) -> int:
        """Channels of the input images: 3 for VGG, the traced example's for a module-family pair."""
        return int(self.meta.get("architecture", {}).get("example_input", [1, 3])[1])

    def encoder(self, level: int | None = None) -> nn.Module:
        """The encoder for ``level``: its own if present, else the next deeper one cut at ``level``.

        ``level`` may be omitted for single-level models (every ``module``-family pair)."""
        level = self._only_level(level)
        source = self._encoder_source(level)
        if source is None:
            have = sorted(self.encoders) or "none"
            raise ModelFormatError(f"model has no encoder for level {level} (encoders: {have}); convert or train one")
        enc = self.encoders[source]
        if source == level:
            return enc
        # Cut once and reuse; the cut is keyed on the source module so replacing it invalidates.
        key = (level, id(enc))
        if key not in self._cuts:
            self._cuts[key] = enc.truncated(level).train(enc.training)
        return self._cuts[key]

    def decoder(self, level: int | None = None) -> nn.Module:
        level = self._only_level(level)
        if level not in self.decoders:
            have = sorted(self.decoders) or "none"
            raise ModelFormatError(f"model has no decoder for level {level} (decoders: {have}); convert or train one")
        return self.decoders[level]

    def _only_level(self, level: int | None) -> int:
        if level is not None:
            return level
        levels = sorted(set(self.encoders) | set(self.decoders))
        if len(levels) != 1:
            raise ModelFormatError(f"model has levels {levels}; name one (e.g. encoder({levels[-1] if levels else 1}))")
        return levels[0]

    def _encoder_source(self, level: int) -> int | None:
        deeper = [k for k in self.encoders if k >= level]
        return min(deeper) if deeper else None

    def eval(self) -> CDModel:
        for module in self.modules():
            module.eval()
        return self

    def modules(self) -> list[nn.Module]:
        return [*self.encoders.values(), *self.decoders.values(), *self.branches.values(), *self._cuts.values()]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> CDModel:
        """Move (and optionally cast) every module in place, like ``nn.Module.to``."""
        for module in self.modules():
            module.to(device, dtype)
        return self

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        return save(self, path, overwrite=overwrite)


def usable_levels(encoder_levels: Iterable[int], decoder_levels: Iterable[int]) -> list[int]:
    """Decoder levels served by an encoder of that level or a deeper one (which is cut on demand)."""
    deepest = max(encoder_levels, default=0)
    return sorted(k for k in decoder_levels if k <= deepest)


def spec_levels(path: str | Path) -> list[int]:
    """:attr:`CDModel.levels` of a model directory, read from ``model.json`` alone (no weights loaded)."""
    parts = read_spec(path)["parts"]
    return usable_levels((int(p["level"]) for p in parts if p.get("role") == "encoder"),
                         (int(p["level"]) for p in parts if p.get("role") == "decoder"))


def _part_entries(model: CDModel) -> list[tuple[dict[str, Any], nn.Module]]:
    entries: list[tuple[dict[str, Any], nn.Module]] = []
    for role, table in (("encoder", model.encoders), ("decoder", model.decoders)):
        for level in sorted(table):
            module = table[level]
            if isinstance(module, DropInEncoder):  # the student as usual, its output maps as a part of their own
                entries.append((_embedding_entry(module.embedding, level), module.embedding))
                module = module.student
            entry = {"role": role, "level": level, "file": f"{role}{level}.safetensors"}
            if model.family != MODULE_FAMILY:
                entry["spec"] = module.spec.to_dict()
            entries.append((entry, module))
    for level in sorted(model.branches):
        branches = model.branches[level]
        entry = {
            "role": "branches",
            "level": level,
            "taps": {tap: list(io) for tap, io in branches.widths.items()},
            "tokens": [tap for tap, is_token in branches.token_taps.items() if is_token],
            "file": f"branches{level}.safetensors",
        }
        entries.append((entry, branches))
    return entries


def _embedding_entry(embedding: nn.ModuleDict, level: int) -> dict[str, Any]:
    """A drop-in encoder's output maps Q: ``{output name: [C', C]}``, applied after the level's encoder on load."""
    return {"role": "embedding", "level": level, "outputs": {name: list(io_channels(q)) for name, q in embedding.items()},
            "tokens": [name for name, q in embedding.items() if isinstance(q, nn.Linear)],
            "file": f"embedding{level}.safetensors"}


def save(model: CDModel, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` as a model directory; the directory appears only once complete."""
    path = Path(path)
    recover(path)  # a crashed write's old model counts as existing
    if path.exists() and not overwrite:
        raise ModelFormatError(f"{path} already exists; choose another --out or pass overwrite/--force")
    with staged_directory(path) as staging:
        parts = []
        for entry, module in _part_entries(model):
            state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(staging / entry["file"]))
            entry["parameters"] = count_parameters(module)
            entry["sha256"] = sha256_file(staging / entry["file"])
            parts.append(entry)
        spec = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "family": model.family,
            "input": {"layout": "NCHW", "color": "RGB", "range": [0, 1]},
            **{k: v for k, v in model.meta.items() if k not in {"format", "format_version", "family", "parts"}},
            "parts": parts,
        }
        write_json(staging / SPEC_FILE, spec)
    return path


def read_format_json(
    file: Path, *, what: str, format_name: str, version: int, error: type[Exception], missing: str, fix: str, upgrade: str
) -> dict[str, Any]:
    """Parse a versioned JSON document (model spec, export manifest) with one-line errors naming the fix.

    ``what`` names the missing thing, ``missing`` is the fix when the file is absent, ``fix`` when it is
    malformed and ``upgrade`` when its ``format_version`` is not ``version``."""
    if not file.is_file():
        raise error(f"{file.parent}: not {what} (no {file.name}); {missing}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file}: invalid JSON ({exc}); {fix}") from None
    except RecursionError:  # nesting deeper than the parser's stack: no real document looks like that
        raise error(f"{file}: invalid JSON (nested too deeply); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise error(f"{file}: not a {format_name} file; {fix}")
    if data.get("format_version") != version:
        raise error(f"{file}: format version {data.get('format_version')!r} is not supported "
                    f"(this cdcompress reads {version}); {upgrade}")
    return data


def read_spec(path: str | Path) -> dict[str, Any]:
    """Parse and sanity-check ``model.json`` of a model directory."""
    path = Path(path)
    spec_path = path / SPEC_FILE if path.is_dir() else path
    spec = read_format_json(
        spec_path, what="a cdcompress model directory", format_name=FORMAT_NAME,
        version=FORMAT_VERSION, error=ModelFormatError, missing="create one with `cdcompress convert`",
        fix="restore or re-create the model", upgrade="upgrade cdcompress",
    )
    if spec.get("family") not in (*FAMILIES, MODULE_FAMILY):
        raise ModelFormatError(f"{spec_path}: unknown model family {spec.get('family')!r}; "
                               f"known: {sorted([*FAMILIES, MODULE_FAMILY])}")
    if not isinstance(spec.get("parts"), list):
        raise ModelFormatError(f"{spec_path}: 'parts' must be a list; restore or re-create the model")
    for entry in spec["parts"]:
        _check_entry(entry, spec_path)
    return spec


def _check_entry(entry: Any, spec_path: Path) -> None:
    """A part names a role, an integer level and a weights file *inside* the directory (never a path elsewhere)."""
    if not (isinstance(entry, Mapping) and isinstance(entry.get("role"), str) and type(entry.get("level")) is int
            and isinstance(entry.get("file"), str)):
        raise ModelFormatError(f"{spec_path}: malformed part {short_repr(entry)} (needs role, integer level and file); "
                               "re-create the model")
    name = entry["file"]
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ModelFormatError(f"{spec_path}: part file {name!r} is not a file name inside the model directory; "
                               "re-create the model")
    if not isinstance(entry.get("sha256", ""), str):
        raise ModelFormatError(f"{spec_path}: part {name}: 'sha256' must be a hex string; re-create the model")


def load(path: str | Path, device: torch.device | str = "cpu", verify: bool = True, *,
         encoder: Factory | None = None, decoder: Factory | None = None) -> CDModel:
    """Rebuild a :class:`CDModel` from its directory (no pickle involved), in eval mode.

    A ``module``-family directory (any architecture) needs the teacher's shapes: ``encoder``/``decoder``
    factories (zero-argument callables, or teacher modules to copy), unless it names an architecture
    registered by code the caller imported. Nothing named in the directory is ever imported or called."""
    path = Path(path)
    recover(path)  # a write that crashed mid-swap left the old model aside
    spec = read_spec(path)
    model = CDModel(family=spec["family"], meta={k: v for k, v in spec.items() if k not in {"parts"}})
    built = _module_pair(spec, path, encoder, decoder) if spec["family"] == MODULE_FAMILY else None
    embeddings: dict[int, EmbeddingBranches] = {}
    for entry in spec["parts"]:
        weights = path / entry["file"]
        if not weights.is_file():
            raise ModelFormatError(f"{weights}: missing weights file listed in {SPEC_FILE}; restore or re-create the model")
        if verify and entry.get("sha256") and sha256_file(weights) != entry["sha256"]:
            raise ModelFormatError(f"{weights}: checksum mismatch, the file is corrupt; restore or re-create the model")
        state = read_state_dict(weights)  # before building: the spec's sizes are checked against what the file holds
        if entry["role"] == "embedding":
            module, table = _embedding_part(entry, path, sum(t.numel() for t in state.values())), embeddings
        elif built is not None:
            module, table = _pair_part(model, built, entry, path)
        else:
            module, table = _build_part(model, FAMILIES[spec["family"]], entry, path,
                                        sum(t.numel() for t in state.values()))
        load_weights(module, state, weights)
        table[entry["level"]] = module.to(device).eval()
    return _with_embeddings(model, embeddings, path)


def _embedding_part(entry: Mapping[str, Any], path: Path, stored: int) -> EmbeddingBranches:
    try:
        outputs = {name: (int(io[0]), int(io[1])) for name, io in entry["outputs"].items()}
        tokens = {name: True for name in entry.get("tokens", [])}
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFormatError(f"{path / SPEC_FILE}: malformed part {short_repr(dict(entry))} "
                               f"({short_repr(str(exc))}); re-create the model") from None
    _check_fits(path, entry, sum(i * o for i, o in outputs.values()), stored)
    return EmbeddingBranches(outputs, tokens)


def _with_embeddings(model: CDModel, embeddings: Mapping[int, EmbeddingBranches], path: Path) -> CDModel:
    """Each level's encoder followed by its output maps: the drop-in student, in the teacher's feature space."""
    for level, embedding in embeddings.items():
        if level not in model.encoders:
            raise ModelFormatError(f"{path / SPEC_FILE}: embedding part for level {level} has no encoder; re-create the model")
        model.encoders[level] = DropInEncoder(model.encoders[level], dict(embedding.items())).eval()
    return model


def _module_pair(spec: Mapping[str, Any], path: Path, encoder: Factory | None,
                 decoder: Factory | None) -> dict[str, nn.Module]:
    record = spec.get("architecture")
    if not isinstance(record, Mapping):
        raise ModelFormatError(f"{path / SPEC_FILE}: a module-family model needs an 'architecture' record; re-create it")
    enc, dec = rebuild(record, str(path / SPEC_FILE), encoder, decoder)
    return {"encoder": enc, "decoder": dec}


def _pair_part(model: CDModel, built: Mapping[str, nn.Module], entry: Mapping[str, Any],
               path: Path) -> tuple[nn.Module, dict]:
    role = entry.get("role") if isinstance(entry, Mapping) else None
    if role not in built or entry.get("level") != 1:
        raise ModelFormatError(f"{path / SPEC_FILE}: a module-family model holds one encoder and one decoder at level 1, "
                               f"got part {entry!r}; re-create the model")
    return built[role], (model.encoders if role == "encoder" else model.decoders)


def save_pair(encoder: nn.Module, decoder: nn.Module, path: str | Path, *, teacher: tuple[nn.Module, nn.Module] | None = None,
              widths: Mapping[str, int] | None = None, example_shape: tuple[int, ...] = (1, 3, 64, 64),
              meta: Mapping[str, Any] | None = None, overwrite: bool = False, teacher_decoder: bool = False) -> Path:
    """Save any encoder-decoder pair as a ``module``-family model directory.

    ``teacher``: the full-width pair it was slimmed from, with ``widths`` (every layer's absolute width,
    :meth:`cdcompress.surgery.slim.SlimResult.widths`); omit both to save a pair as it is (e.g. a teacher). The
    record is checked by rebuilding it before anything is written, so a saved model always loads. ``teacher_decoder``:
    ``decoder`` is the teacher's own, unslimmed (a drop-in student's pair: only the encoder was cut)."""
    source = teacher or (encoder, decoder)
    record = architecture_record(source[0], source[1], widths if teacher else None, example_shape, teacher_decoder)
    _check_rebuilds(record, source, (encoder.student if isinstance(encoder, DropInEncoder) else encoder, decoder))
    model = CDModel(family=MODULE_FAMILY, encoders={1: encoder}, decoders={1: decoder},
                    meta={**(meta or {}), "architecture": record})
    return save(model, path, overwrite=overwrite)


def _check_rebuilds(record: Mapping[str, Any], teacher: tuple[nn.Module, nn.Module], pair: tuple[nn.Module, nn.Module]) -> None:
    rebuilt = rebuild(record, "save", copy.deepcopy(teacher[0]), copy.deepcopy(teacher[1]))
    for role, want, got in zip(("encoder", "decoder"), pair, rebuilt, strict=True):
        shapes = {k: tuple(v.shape) for k, v in want.state_dict().items()}
        again = {k: tuple(v.shape) for k, v in got.state_dict().items()}
        if shapes != again:
            diff = sorted(k for k in set(shapes) | set(again) if shapes.get(k) != again.get(k))
            raise ModelFormatError(f"the {role} cannot be rebuilt from its teacher and the recorded widths (differs at "
                                   f"{diff[:3]}); save the decoder that train_decoder returned, or the pair as it is")


def _build_part(model: CDModel, family: Family, entry: Mapping[str, Any], path: Path,
                stored: int) -> tuple[nn.Module, dict]:
    """The module an entry describes, refused before it is allocated when the weights file holds too few values to fill it."""
    try:
        role = entry["role"]
        if role == "branches":
            taps = {tap: (int(io[0]), int(io[1])) for tap, io in entry["taps"].items()}
            tokens = {tap: True for tap in entry.get("tokens", [])}
            _check_fits(path, entry, sum(i * o for i, o in taps.values()), stored)
            return EmbeddingBranches(taps, tokens), model.branches
        part_spec = family.spec_from_dict(entry["spec"])
        if getattr(part_spec, "level", entry["level"]) != entry["level"]:
            raise ModelFormatError(f"{path / SPEC_FILE}: part {entry['file']} is listed at level {entry['level']} but its "
                                   f"spec is level {part_spec.level}; re-create the model")
        _check_fits(path, entry, _least_parameters(part_spec), stored)
        if role == "encoder":
            return family.encoder(part_spec), model.encoders
        if role == "decoder":
            return family.decoder(part_spec), model.decoders
        raise ModelFormatError(f"{path / SPEC_FILE}: unknown part role {role!r}; expected encoder, decoder or branches")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFormatError(f"{path / SPEC_FILE}: malformed part {short_repr(dict(entry))} "
                               f"({short_repr(str(exc))}); re-create the model") from None


def _least_parameters(spec: Any) -> int:
    """A lower bound on a VGG part's parameters: its 3x3 convolutions' weights (widths from the RGB input on)."""
    widths = [int(w) for w in getattr(spec, "widths", ())]
    return sum(9 * cin * cout for cin, cout in zip([3, *widths[:-1]], widths, strict=True))


def _check_fits(path: Path, entry: Mapping[str, Any], parameters: int, stored: int) -> None:
    """The file must hold at least the spec's parameters: else a spec edited to huge widths would make the loader
    allocate (and initialise) gigabytes before the weights could be found not to fit."""
    if parameters > stored:
        raise ModelFormatError(f"{path / SPEC_FILE}: part {entry['file']} describes at least {parameters:,} parameters but "
                               f"its file holds {stored:,} values; restore or re-create the model")


__all__ = ["CDModel", "CheckpointError", "FAMILIES", "load", "read_spec", "save", "save_pair"]
