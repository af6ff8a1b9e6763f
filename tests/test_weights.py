"""`cdcompress weights download` against an HTTP server on 127.0.0.1: hash checked, nothing half-written."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdcompress.cli import main
from cdcompress.core.digest import git_blob_id
from cdcompress.models import weights


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def error_lines(output: str) -> list[str]:
    """Lines the CLI printed besides the download progress (a bar on a terminal, plain ``name: n/total (p%), ...``
    lines elsewhere)."""
    return [line for line in output.splitlines() if line.strip() and "%|" not in line
            and not re.match(r"\S+: .*\(\d+%\), ", line)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def publish(monkeypatch: pytest.MonkeyPatch, url: str, payload: bytes) -> None:
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    entry = weights.PublishedWeights(url, "vgg19-test.pth", prefix, "test weights")
    monkeypatch.setitem(weights.KNOWN_WEIGHTS, "vgg19", entry)


def test_good_file_is_accepted(server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = server
    payload = b"weights" * 50_000
    (root / "good.pth").write_bytes(payload)
    publish(monkeypatch, f"{base}/good.pth", payload)
    result = CliRunner().invoke(main, ["weights", "download", "vgg19", "--dest", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "vgg19-test.pth").read_bytes() == payload
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["vgg19-test.pth"]


def test_bad_hash_is_refused_and_nothing_is_left(server: tuple[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = server
    (root / "forged.pth").write_bytes(b"forged" * 1000)
    publish(monkeypatch, f"{base}/forged.pth", b"the real weights")
    cache = tmp_path / "cache"
    result = CliRunner().invoke(main, ["weights", "download", "vgg19", "--dest", str(cache)])
    assert result.exit_code == 2
    lines = error_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("error:") and "does not match" in lines[0], result.output
    assert list(cache.iterdir()) == []


def test_unreachable_mirror_is_one_line(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, _ = server
    cache = tmp_path / "cache"
    result = CliRunner().invoke(main, ["weights", "download", "vgg19", "--dest", str(cache), "--url", f"{base}/missing"])
    lines = error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1 and "download of" in lines[0], result.output
    assert list(cache.iterdir()) == []


WCT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "wct-vgg19"


def test_wct_teacher_downloads_verifies_and_converts(server: tuple[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Levels 1-2 by SHA-256 from a mirror laid out like the pinned repository; a level-3 file given a git blob id."""
    if not (WCT / "vgg_normalised_conv2_1.pth").is_file():
        pytest.skip("../shared/reference/wct-vgg19 is not available")
    base, root = server
    for k in (1, 2, 3):
        (root / f"vgg19_{k}").mkdir()
        for name in (f"vgg_normalised_conv{k}_1.pth", f"feature_invertor_conv{k}_1.pth"):
            (root / f"vgg19_{k}" / name).write_bytes((WCT / name).read_bytes())
    level3 = (git_blob_id(WCT / "vgg_normalised_conv3_1.pth"), git_blob_id(WCT / "feature_invertor_conv3_1.pth"))
    monkeypatch.setitem(weights.WCT_CHECKSUMS, 3, level3)
    cache = tmp_path / "cache"
    result = CliRunner().invoke(main, ["weights", "download", "wct-vgg19", "--levels", "1-3", "--dest", str(cache),
                                       "--url", base])
    assert result.exit_code == 0, result.output
    from cdcompress.models import load

    model = load(cache / "wct-vgg19")
    assert model.levels == [1, 2, 3] and model.meta["source"]["kind"] == "wct-pytorch"

    # A tampered file on the mirror is refused by its git blob id, and no model appears from it.
    (root / "vgg19_3" / "feature_invertor_conv3_1.pth").write_bytes(b"tampered")
    other = tmp_path / "other"
    result = CliRunner().invoke(main, ["weights", "download", "wct-vgg19", "--levels", "3", "--dest", str(other),
                                       "--url", base])
    lines = error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1 and "git blob id" in lines[0], result.output
    assert not (other / "wct-vgg19").exists()
