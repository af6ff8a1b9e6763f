"""Deployable bundles: verified per-level graphs plus a manifest that pins what they compute.

A bundle directory holds ``enc{k}.onnx`` / ``dec{k}.onnx`` per level, optional TensorRT engines and
``manifest.json``: levels, graph input/output names and shapes, normalisation, opset, precision,
the parity table, the source model's checksums, tool versions and the SHA-256 of every file. It is
assembled in a hidden staging directory next to the target and renamed into place only after
every graph passed verification, so a bundle that exists is complete and verified.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.atomic import recover, staged_directory, write_json
from ..core.digest import sha256_file
from ..core.progress import progress_iter
from ..models.format import SPEC_FILE, CDModel, read_spec
from ..models.pair import MODULE_FAMILY
from ..surgery.drop_in import DropInEncoder
from ..surgery.embed import io_channels
from .errors import ExportError
from .manifest import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST_FILE
from .onnx import (
    ROLES,
    ParityRow,
    Part,
    check_parity,
    export_graph,
    format_parity_table,
    require_onnx,
    reuse_torchlib_registry,
    verification_image,
    verify_graph,
)
from .profiles import ExportProfile, load_profile
from .runtime import make_session

log = logging.getLogger(__name__)

#: Inputs per graph for fixed-shape exports, which have only one size to check.
FIXED_SHAPE_CASES = 3
_TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy")


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    rows: list[ParityRow] = field(default_factory=list)


def export_bundle(model: CDModel, out: str | Path, profile: ExportProfile | str | None = None,
                  levels: Sequence[int] | None = None, *, model_ref: str = "", model_dir: Path | None = None,
                  tensorrt: bool = False, overwrite: bool = False, echo: Callable[[str], None] | None = None,
                  progress: bool = True) -> ExportResult:
    """Export, verify and (optionally) build engines for ``levels`` of ``model`` into bundle ``out``.

    ``profile``: an :class:`ExportProfile` or a profile name/path (default ``onnx-dynamic``). A
    ``module``-family model (any encoder-decoder pair) exports as ``enc1``/``dec1`` graphs.
    Raises :class:`ExportError` (and writes nothing) when any graph misses the profile's tolerance. The parity
    table goes to ``echo`` (the CLI passes ``click.echo``), else to this module's logger at INFO: library code
    does not print.
    """
    echo = echo or log.info
    if not isinstance(profile, ExportProfile):
        profile = load_profile(profile or "onnx-dynamic")
    out = Path(out)
    if model.family == MODULE_FAMILY:
        if tensorrt:
            raise ExportError("TensorRT engines are built for VGG-family bundles only; export the ONNX graphs and build "
                              "engines with trtexec")
        return _export_pair_bundle(model, out, profile, model_ref, model_dir, overwrite, echo, progress)
    levels = _check_levels(model, levels)
    trt = None
    if tensorrt:  # fail in a second, not after minutes of export
        from .tensorrt import require_tensorrt, trt_settings

        trt_settings(profile)
        trt = require_tensorrt()
    require_onnx()
    recover(out)  # a crashed write's old bundle counts as existing
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it")
    parts = [Part(role, k, _feature_channels(_module(model, role, k))) for k in levels for role in ROLES]
    with staged_directory(out) as staging:
        entries, rows = _export_graphs(model, parts, staging, profile, progress)
        echo(format_parity_table(rows))
        check_parity(rows)
        engines = None
        if trt is not None:
            from .tensorrt import build_engines

            engines = build_engines(trt, staging, parts, profile, progress)
        manifest = _manifest(model, model_ref, model_dir, profile, levels, entries, rows, engines, staging)
        write_json(staging / MANIFEST_FILE, manifest)
    return ExportResult(out, manifest, rows)


def _export_pair_bundle(model: CDModel, out: Path, profile: ExportProfile, model_ref: str, model_dir: Path | None,
                        overwrite: bool, echo: Callable[[str], None], progress: bool) -> ExportResult:
    """Encoder and decoder graphs of any pair, verified on the profile's sizes (rounded to the pair's stride)."""
    from .pair import FlatDecoder, FlatEncoder, check_sizes, export_pair_graph, pair_cases, strides, verify_pair_graph
    require_onnx()
    if profile.precision != "fp32":
        raise ExportError("fp16 export is available for VGG-family bundles only; export this pair in float32")
    recover(out)  # a crashed write's old bundle counts as existing
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it")
    encoder, decoder = model.encoder(), model.decoder()
    channels = model.image_channels
    deepest = max(strides(encoder, channels))
    sizes = [profile.shape] * FIXED_SHAPE_CASES if profile.shape else check_sizes(profile.check_sizes, deepest)
    cases = pair_cases(encoder, sizes, channels)
    entries: dict[str, dict[str, Any]] = {}
    rows: list[ParityRow] = []
    with staged_directory(out) as staging, reuse_torchlib_registry():
        for name, role in progress_iter((("enc1", "encoder"), ("dec1", "decoder")), "export", "graph", enabled=progress):
            io = export_pair_graph(encoder if role == "encoder" else (encoder, decoder), role, staging / f"{name}.onnx",
                                   profile.opset, profile.shape, channels)
            reference = FlatEncoder(encoder) if role == "encoder" else FlatDecoder(decoder, io["structure"])
            rows += verify_pair_graph(make_session(staging / f"{name}.onnx"), reference.eval(), name, cases[role],
                                      profile.tolerance)
            entries[name] = {"role": role, "level": 1, "file": f"{name}.onnx", **io,
                             "parameters_sha256": parameters_sha256(encoder if role == "encoder" else decoder)}
        echo(format_parity_table(rows))
        check_parity(rows)
        manifest = _manifest(model, model_ref, model_dir, profile, [1], entries, rows, None, staging)
        manifest.update(family=MODULE_FAMILY, input={"layout": "NCHW", "channels": channels, "dtype": "float32",
                                                     "multiple_of": deepest},
                        normalisation={"where": "inside the user's encoder, if any"})
        write_json(staging / MANIFEST_FILE, manifest)
    return ExportResult(out, manifest, rows)


def _check_levels(model: CDModel, levels: Sequence[int] | None) -> list[int]:
    available = model.levels
    if not available:
        raise ExportError("model has no level with both an encoder and a decoder; nothing to export")
    wanted = list(levels) if levels else available
    missing = [k for k in wanted if k not in available]
    if missing:
        raise ExportError(f"--levels: model has no encoder/decoder pair for level(s) {missing} (available: {available})")
    return sorted(wanted)


def _export_graphs(model: CDModel, parts: list[Part], staging: Path, profile: ExportProfile,
                   progress: bool) -> tuple[dict[str, dict[str, Any]], list[ParityRow]]:
    """Export each graph and check it on the profile's sizes against the PyTorch module."""
    entries: dict[str, dict[str, Any]] = {}
    rows: list[ParityRow] = []
    images = _verification_images(profile)
    with reuse_torchlib_registry():
        for part in progress_iter(parts, "export", "graph", enabled=progress):
            module = _module(model, part.role, part.level)
            io = export_graph(module, part, staging / part.file, profile.opset, profile.shape, profile.precision)
            cases = _cases(model, part, images)
            rows += verify_graph(make_session(staging / part.file), module, part, cases, profile.tolerance)
            entries[part.name] = {"role": part.role, "level": part.level, "file": part.file, "stride": part.stride,
                                  "channels": part.channels, **io, "spec": _spec(module),
                                  "parameters_sha256": parameters_sha256(module)}
    return entries, rows


def _module(model: CDModel, role: str, level: int) -> nn.Module:
    return model.encoder(level) if role == "encoder" else model.decoder(level)


def _feature_channels(module: nn.Module) -> int:
    """Channels between the level's graphs: a drop-in student's are its output maps' (the teacher's width)."""
    if isinstance(module, DropInEncoder):
        return int(io_channels(next(iter(module.embedding.values())))[1])
    return int(module.spec.out_channels)


def _spec(module: nn.Module) -> dict[str, Any] | None:
    """The architecture (widths, padding) behind a graph: exact tiling derives its halos from it (a drop-in student's
    from the student inside it: its appended 1x1 maps add no halo)."""
    module = module.student if isinstance(module, DropInEncoder) else module
    spec = getattr(module, "spec", None)
    return spec.to_dict() if hasattr(spec, "to_dict") else None


def _verification_images(profile: ExportProfile) -> Cases:
    if profile.shape is None:
        return [(hw, verification_image(hw, seed)) for seed, hw in enumerate(profile.check_sizes)]
    return [(profile.shape, verification_image(profile.shape, seed)) for seed in range(FIXED_SHAPE_CASES)]


Cases = list[tuple[tuple[int, int], torch.Tensor]]


def _cases(model: CDModel, part: Part, images: Cases) -> Cases:
    """Encoders get the test images; decoders the PyTorch encoder's features of them (realistic statistics)."""
    if part.role == "encoder":
        return images
    encoder = model.encoder(part.level)
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        return [(hw, encoder(image.to(device)).cpu().clone()) for hw, image in images]


def parameters_sha256(module: nn.Module) -> str:
    """Digest of a module's tensors (names, dtypes, shapes, bytes): ties a graph to exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _source(model: CDModel, model_ref: str, model_dir: Path | None) -> dict[str, Any]:
    source: dict[str, Any] = {"ref": model_ref, "name": model.meta.get("name", model_ref), "origin": model.meta.get("source")}
    if model_dir is not None and (model_dir / SPEC_FILE).is_file():
        spec = read_spec(model_dir)
        source["model_json_sha256"] = sha256_file(model_dir / SPEC_FILE)
        source["weights_sha256"] = {p["file"]: p.get("sha256") for p in spec["parts"]}
    return source


def tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("cdcompress", *_TOOLS):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _manifest(model: CDModel, model_ref: str, model_dir: Path | None, profile: ExportProfile, levels: list[int],
              parts: dict[str, dict[str, Any]], rows: list[ParityRow], engines: dict[str, Any] | None,
              staging: Path) -> dict[str, Any]:
    tools = tool_versions()
    if engines is not None:
        tools["tensorrt"] = engines["tensorrt_version"]
    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "levels": levels,
        "shape": "dynamic" if profile.shape is None else list(profile.shape),
        "precision": profile.precision,
        "level_precision": {str(k): profile.precision for k in levels},
        "opset": profile.opset,
        "input": {"layout": "NCHW", "color": "RGB", "range": [0, 1], "dtype": "float32"},
        "normalisation": {"where": "inside the encoder graphs (conv0, 1x1)", "model": model.meta.get("normalisation")},
        "parts": parts,
        "engines": None if engines is None else {k: v for k, v in engines.items() if k != "tensorrt_version"},
        "verification": {"runtime": "onnxruntime CPUExecutionProvider", "metric": "max|onnx - torch| / max(1, max|torch|)",
                         "tolerance": profile.tolerance, "rows": [r.as_dict() for r in rows]},
        "profile": profile.to_dict(),
        "source_model": _source(model, model_ref, model_dir),
        "tools": tools,
        "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST_FILE},
    }
