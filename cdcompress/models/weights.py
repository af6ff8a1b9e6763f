"""Downloading published weights for users who have a network (tests use a local server).

Downloads stream to a temporary file, are checked against the published SHA-256 (torchvision
publishes the first 8 hex digits in its file names) and only then renamed into place, so a
failed or forged download never leaves a usable-looking file behind.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..core.digest import git_blob_id, sha256_file
from ..core.errors import CDCompressError
from ..core.progress import Progress


class DownloadError(CDCompressError):
    """A download that failed or did not match its published checksum."""


@dataclass(frozen=True)
class PublishedWeights:
    """One file and how to recognise it: a SHA-256 (or its published prefix), or a git blob id."""

    url: str
    filename: str
    sha256_prefix: str
    description: str
    git_blob: str = ""

    def verify(self, path: Path) -> str | None:
        """``None`` when ``path`` is this file, else what it hashed to."""
        if self.git_blob:
            got = git_blob_id(path)
            return None if got == self.git_blob else f"git blob id {got}, published {self.git_blob}"
        got = sha256_file(path)
        return None if got.startswith(self.sha256_prefix) else f"SHA-256 {got[:16]}... does not match the published " \
                                                              f"{self.sha256_prefix[:16]}"


#: The WCT teacher's PyTorch conversion at a pinned commit of pietrocarbo/deep-transfer (Apache-2.0):
#: SHA-256 of levels 1-3 (as in ../shared/reference/wct-vgg19), git blob ids of levels 4-5 at that commit.
WCT_COMMIT = "e87e72f9f8612062431a82289b758ef570da52c3"
WCT_BASE_URL = f"https://raw.githubusercontent.com/pietrocarbo/deep-transfer/{WCT_COMMIT}/models/autoencoder_vgg19"
WCT_CHECKSUMS: dict[int, tuple[str, str]] = {  # level -> (encoder, decoder)
    1: ("9f60c0230232985e2505eeaaeb670119eacfd590cb06c2ea752538b974a1d2aa",
        "78e72d8d80ea9460c45bc89bf9c29d0804639771e443a18c46e20e1f73a57578"),
    2: ("b86e3e26b907a9d97a0567826b18fc85c23b5873acc1c2b7ddb9b0a70fc4a0cb",
        "4d4134c572dfa273b4f1f3d76a2439d62197a018de6d743c2b9d85b2093c409e"),
    3: ("ff8506173d3a17e7b0fbfbff242c00b6827cfbcd7c21852b46806ae6a3fd7b09",
        "f32bc7bd366ff027936b3d90a98bc3f8667ba3f2762df916261a0586c5e30ab5"),
    4: ("48d10de68c06b7e79e1935f3ce230a72f68998d3", "63fef9331525cfaa2b555db98a661d1c3510d0f3"),
    5: ("f662e4d9927a7c30c0e9a2e71d75a355a9ab4f7d", "eacbc8e8387d7575240a613c5a4c147ffb805f03"),
}
WCT_MODEL_DIR = "wct-vgg19"
WCT_ENV = "CDCOMPRESS_WCT_VGG19"
"""Environment variable naming a local copy of the WCT teacher (a model directory or the raw .pth folder)."""
WCT_HINT = (f"run `cdcompress weights download wct-vgg19` (needs github.com), or set {WCT_ENV} to a local copy "
            "(a converted model directory or a folder of vgg_normalised_conv{k}_1.pth / feature_invertor_conv{k}_1.pth "
            "files, e.g. ../shared/reference/wct-vgg19)")


def locate_wct(path: str | Path | None = None) -> Path | None:
    """Where the WCT teacher is: ``path`` (unless ``None``/``"auto"``), else ``$CDCOMPRESS_WCT_VGG19``, else the
    weights cache that ``weights download wct-vgg19`` fills; ``None`` when there is none. A location that is
    named but missing is an error, not a silent fallback."""
    if path not in (None, "", "auto"):
        named = Path(path)  # type: ignore[arg-type]
        if not named.exists():
            raise CDCompressError(f"WCT teacher {named}: no such file or directory; {WCT_HINT}")
        return named
    from_env = os.environ.get(WCT_ENV)
    if from_env:
        if not Path(from_env).exists():
            raise CDCompressError(f"{WCT_ENV}={from_env}: no such directory; point it at the WCT teacher or unset it")
        return Path(from_env)
    cached = default_weights_dir() / WCT_MODEL_DIR
    return cached if (cached / "model.json").is_file() else None


def require_wct(path: str | Path | None = None) -> Path:
    """:func:`locate_wct`, or a one-line error saying how to get the teacher."""
    where = locate_wct(path)
    if where is None:
        raise CDCompressError(f"no WCT VGG-19 teacher found; {WCT_HINT}")
    return where


def wct_files(levels: tuple[int, ...], base_url: str = WCT_BASE_URL) -> list[PublishedWeights]:
    """The encoder and decoder file of each level, with the checksum that identifies it."""
    files = []
    for k in levels:
        for name, checksum in zip((f"vgg_normalised_conv{k}_1.pth", f"feature_invertor_conv{k}_1.pth"), WCT_CHECKSUMS[k],
                                  strict=True):
            blob = len(checksum) == 40
            files.append(PublishedWeights(f"{base_url.rstrip('/')}/vgg19_{k}/{name}", name, "" if blob else checksum,
                                          f"WCT VGG-19 level {k}", checksum if blob else ""))
    return files


def download_wct(levels: tuple[int, ...], dest_dir: str | Path | None = None, base_url: str | None = None,
                 timeout: float = 60.0) -> Path:
    """Fetch and verify the WCT teacher's files for ``levels`` and convert them into a model directory
    (``<dest>/wct-vgg19``, default in torch's hub cache) that recipes use as ``teacher: {source: model}``."""
    from .converters import convert_wct_pytorch
    from .format import save

    dest = Path(dest_dir) if dest_dir else default_weights_dir()
    raw = dest / "wct-vgg19-pytorch"
    for entry in wct_files(tuple(levels), base_url or WCT_BASE_URL):
        if not ((raw / entry.filename).is_file() and entry.verify(raw / entry.filename) is None):
            fetch(entry, raw, entry.url, timeout)
    return save(convert_wct_pytorch(raw), dest / WCT_MODEL_DIR, overwrite=True)


KNOWN_WEIGHTS: dict[str, PublishedWeights] = {
    "vgg19": PublishedWeights(
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        "vgg19-dcbb9e9d.pth",
        "dcbb9e9d",
        "torchvision VGG-19 ImageNet weights; a `builtin vgg19` teacher uses them from torch's hub cache, and "
        "`cdcompress convert --from torchvision FILE --out DIR` makes a model directory of them",
    ),
}


def default_weights_dir() -> Path:
    """torch's hub cache, where torchvision (and the demo recipe) look for these files."""
    import torch  # here, not at import: listing weights must not load torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def download(name: str, dest_dir: str | Path | None = None, url: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch ``name`` into ``dest_dir`` (default: torch's hub cache) and verify its hash."""
    if name not in KNOWN_WEIGHTS:
        raise DownloadError(f"unknown weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}")
    entry = KNOWN_WEIGHTS[name]
    return fetch(entry, Path(dest_dir) if dest_dir else default_weights_dir(), url or entry.url, timeout)


def fetch(entry: PublishedWeights, dest: Path, source: str, timeout: float = 60.0) -> Path:
    """Stream ``source`` to a temporary file, verify it against ``entry``, then rename it into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / entry.filename
    part = dest / f".{entry.filename}.part-{os.getpid()}"
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(total, entry.filename, "B", unit_scale=True) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {source} failed ({exc}); check the network or pass --url to a mirror") from None
    mismatch = entry.verify(part)
    if mismatch is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{source}: {mismatch}; file discarded, try again or another mirror")
    os.replace(part, target)
    return target
