"""A bundle's manifest: its format, and reading it back with every file's checksum checked.

Its own module because both sides need it: the exporter writes bundles, the runtime reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.atomic import recover
from ..core.digest import sha256_file
from ..core.errors import short_repr
from ..models.format import read_format_json
from .errors import ExportError

BUNDLE_FORMAT = "cdcompress-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse and check a bundle's manifest; with ``verify`` every listed file's SHA-256 is compared."""
    path = Path(path)
    recover(path)  # a write that crashed mid-swap left the old bundle aside
    manifest_path = path / MANIFEST_FILE
    manifest = read_format_json(
        manifest_path, what="an export bundle", format_name=BUNDLE_FORMAT, version=BUNDLE_VERSION, error=ExportError,
        missing="create one with `cdcompress export MODEL`", fix="re-export the bundle",
        upgrade="re-export with this version",
    )
    for key in ("levels", "parts", "files", "shape"):
        if key not in manifest:
            raise ExportError(f"{manifest_path}: missing '{key}'; re-export the bundle")
    _check_structure(manifest, manifest_path)
    unlisted = [e.get("file") for e in manifest["parts"].values() if e.get("file") not in manifest["files"]]
    if unlisted:
        raise ExportError(f"{manifest_path}: graph(s) {unlisted} have no checksum in 'files'; re-export the bundle")
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ExportError(f"{file}: listed in the manifest but missing; re-export the bundle")
        if verify and sha256_file(file) != entry.get("sha256"):
            raise ExportError(f"{file}: checksum mismatch, the file is corrupt or was modified; re-export the bundle")
    return {**manifest, "level_precision": level_precisions(manifest, manifest_path)}


def _is_file_name(name: Any) -> bool:
    """A plain name inside the bundle: a manifest must not point the runtime at files elsewhere."""
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name


def _check_structure(manifest: dict[str, Any], where: Path) -> None:
    """The fields the runtime indexes have the types it expects, so a damaged manifest is one line, not a crash."""
    def bad(what: str) -> ExportError:
        return ExportError(f"{where}: {what}; re-export the bundle")

    levels, parts, files, shape = (manifest[k] for k in ("levels", "parts", "files", "shape"))
    if not isinstance(levels, list) or not levels or not all(type(k) is int and k >= 1 for k in levels):
        raise bad(f"'levels' must be a list of positive integers, got {short_repr(levels)}")
    if shape != "dynamic" and not (isinstance(shape, list) and len(shape) == 2
                                   and all(type(d) is int and d >= 1 for d in shape)):
        raise bad(f"'shape' must be \"dynamic\" or [height, width], got {short_repr(shape)}")
    if not isinstance(files, dict) or not all(_is_file_name(n) and isinstance(e, dict) for n, e in files.items()):
        raise bad("'files' must map file names inside the bundle to {sha256: ...}")
    if not isinstance(parts, dict):
        raise bad(f"'parts' must map graph names to entries, got {short_repr(parts)}")
    for name, entry in parts.items():
        named_input = isinstance(entry, dict) and (  # one named input (VGG graphs) or a list of them (any pair)
            (isinstance(entry.get("input"), dict) and isinstance(entry["input"].get("name"), str))
            or isinstance(entry.get("inputs"), list))
        if not (named_input and _is_file_name(entry.get("file")) and isinstance(entry.get("spec") or {}, dict)):
            raise bad(f"graph {short_repr(name)} needs a file inside the bundle, an input name and (optionally) a spec")
    missing = [f"{role}{k}" for k in levels for role in ("enc", "dec") if f"{role}{k}" not in parts]
    if missing:
        raise bad(f"levels {levels} need graphs {missing}, which 'parts' lacks")


#: What a level's graphs compute in: float32, half precision (float32 interface), or int8 (QDQ).
LEVEL_PRECISIONS = ("fp32", "fp16", "int8")


def level_precisions(manifest: dict[str, Any], where: str | Path = MANIFEST_FILE) -> dict[str, str]:
    """``{"level": precision}`` for every level. An INT8 bundle keeps the float32 graphs of levels past its quality
    gate, so one bundle-wide ``precision`` cannot say it; manifests from before ``level_precision`` was written
    are read from their ``precision`` and ``int8_levels``."""
    stated = manifest.get("level_precision")
    if stated is None:
        int8 = set(manifest.get("int8_levels", [])) if manifest.get("precision") == "int8" else set()
        stated = {str(k): "int8" if k in int8 else ("fp32" if int8 else manifest.get("precision")) for k in manifest["levels"]}
    if not isinstance(stated, dict) or set(stated) != {str(k) for k in manifest["levels"]} or not all(
            v in LEVEL_PRECISIONS for v in stated.values()):
        raise ExportError(f"{where}: 'level_precision' must give each of levels {manifest['levels']} one of "
                          f"{', '.join(LEVEL_PRECISIONS)}; re-export the bundle")
    return dict(stated)


def bundle_precision(level_precision: dict[str, str]) -> str:
    """The bundle-wide ``precision``: the levels' one precision, or ``mixed`` when they differ."""
    kinds = set(level_precision.values())
    return kinds.pop() if len(kinds) == 1 else "mixed"

