"""Downloading published weights for users who have a network (tests use a local server).

Downloads stream to a temporary file, are checked against the published SHA-256 (torchvision
publishes the first 8 hex digits in its file names) and only then renamed into place, so a
failed or forged download never leaves a usable-looking file behind.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import CDCompressError


class DownloadError(CDCompressError):
    """A download that failed or did not match its published checksum."""


@dataclass(frozen=True)
class PublishedWeights:
    url: str
    filename: str
    sha256_prefix: str
    description: str


KNOWN_WEIGHTS: dict[str, PublishedWeights] = {
    "vgg19": PublishedWeights(
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "vgg19-dcbb9e9d.pth",
        "dcbb9e9d",
        "torchvision VGG-19 ImageNet weights (convert with `cdcompress convert --from torchvision`)",
    ),
}


def default_weights_dir() -> Path:
    """torch's hub cache, where torchvision (and the demo recipe) look for these files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(name: str, dest_dir: str | Path | None = None, url: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``name`` into ``dest_dir`` (default: torch's hub cache) and verify its hash."""
    if name not in KNOWN_WEIGHTS:
        raise DownloadError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    entry = KNOWN_WEIGHTS[name]
    dest = Path(dest_dir) if dest_dir else default_weights_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / entry.filename
    part = dest / f".{entry.filename}.part-{os.getpid()}"
    source = url or entry.url
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=entry.filename) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {source} failed ({exc}); check the network or pass --url to a mirror") from None
    if not digest.hexdigest().startswith(entry.sha256_prefix):
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{source}: SHA-256 {digest.hexdigest()[:16]}... does not match the published {entry.sha256_prefix}; "
            "file discarded, try again or another mirror"
        )
    os.replace(part, target)
    return target
