"""A bundle's manifest: its format, and reading it back with every file's checksum checked.

Its own module because both sides need it: the exporter writes bundles, the runtime reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models.format import read_format_json, sha256_file
from .errors import ExportError

BUNDLE_FORMAT = "cdcompress-bundle"
BUNDLE_VERSION = 1
MANIFEST_FILE = "manifest.json"


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse and check a bundle's manifest; with ``verify`` every listed file's SHA-256 is compared."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    manifest = read_format_json(
        manifest_path, what="an export bundle", format_name=BUNDLE_FORMAT, version=BUNDLE_VERSION, error=ExportError,
        missing="create one with `cdcompress export MODEL`", fix="re-export the bundle",
        upgrade="re-export with this version",
    )
    for key in ("levels", "parts", "files", "shape"):
        if key not in manifest:
            raise ExportError(f"{manifest_path}: missing '{key}'; re-export the bundle")
    unlisted = [e.get("file") for e in manifest["parts"].values() if e.get("file") not in manifest["files"]]
    if unlisted:
        raise ExportError(f"{manifest_path}: graph(s) {unlisted} have no checksum in 'files'; re-export the bundle")
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ExportError(f"{file}: listed in the manifest but missing; re-export the bundle")
        if verify and sha256_file(file) != entry.get("sha256"):
            raise ExportError(f"{file}: checksum mismatch, the file is corrupt or was modified; re-export the bundle")
    return manifest

