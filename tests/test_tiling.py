"""Tiling primitives without models: spans, sizes, canvases, streamed image I/O and the decompression bound."""

from __future__ import annotations

import importlib
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cdcompress.core.errors import CDCompressError, ImageError
from cdcompress.data import images
from cdcompress.data.images import decode_to_canvas, image_size, load_image, write_png
from cdcompress.stylization.canvas import DiskCanvas, MemoryCanvas, read_padded
from cdcompress.stylization.tiling import parse_memory, spans
from cdcompress.stylization.wct import AffineMap, FeatureStats, wct_map


def test_spans_cover_once_with_aligned_halos() -> None:
    for length, tile, halo, align in [(160, 48, 16, 16), (1040, 1024, 160, 16), (7, 3, 1, 1), (96, 200, 8, 8)]:
        parts = spans(length, tile, halo, align)
        assert parts[0].core[0] == 0 and parts[-1].core[1] == length
        assert all(a.core[1] == b.core[0] for a, b in zip(parts, parts[1:], strict=False))
        for p in parts:
            assert p.core[0] % align == 0 and p.window[0] % align == 0 and p.window[1] % align == 0
            assert p.window[0] == max(0, p.core[0] - halo) and p.window[1] == min(length, p.core[1] + halo)
    assert [p.core for p in spans(1040, 1024, 160, 16)] == [(0, 528), (528, 1040)]  # balanced, no sliver


def test_parse_memory() -> None:
    assert parse_memory("4GiB") == 4 << 30 and parse_memory("512MiB") == 512 << 20
    assert parse_memory("2G") == 2 << 30 and parse_memory("8GB") == 8 * 10**9 and parse_memory("1.5 GiB") == 3 << 29
    assert parse_memory(1000) == 1000
    for bad in ("lots", "-1GiB", "0", "4XB"):
        with pytest.raises(CDCompressError, match="memory size"):
            parse_memory(bad)


def test_read_padded_matches_torch_reflection(tmp_path: Path) -> None:
    data = torch.rand(1, 3, 21, 34)
    padded = F.pad(data, (0, 14, 0, 11), mode="reflect")
    for canvas in (MemoryCanvas.from_tensor(data), DiskCanvas(tmp_path / "c.f32", (21, 34, 3))):
        if isinstance(canvas, DiskCanvas):
            canvas.write(0, 0, data[0].permute(1, 2, 0).numpy())
        window = read_padded(canvas, (8, 32), (16, 48))
        np.testing.assert_array_equal(window, padded[0, :, 8:32, 16:48].permute(1, 2, 0).numpy())


def test_feature_stats_are_shift_stable() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5000, dtype=torch.float64) * 3 + 1e4  # large mean, small spread
    stats = FeatureStats(4)
    for part in x.split(777, dim=1):
        stats.update(part.reshape(4, 1, -1).float())
    torch.testing.assert_close(stats.covariance(), torch.cov(x.float().double()), rtol=1e-6, atol=1e-6)


def test_wct_alpha_blends_and_whitens() -> None:
    torch.manual_seed(0)
    c = torch.randn(1, 3, 40, 40) * torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]
    s = torch.randn(1, 3, 30, 30) * 5 + 2
    cs, ss = FeatureStats.of(c), FeatureStats.of(s)
    out = wct_map(cs, ss, alpha=1.0, content_ridge=0.0).apply(c)
    torch.testing.assert_close(FeatureStats.of(out).covariance(), ss.covariance(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(FeatureStats.of(out).mean(), ss.mean(), rtol=1e-4, atol=1e-4)
    half = wct_map(cs, ss, alpha=0.5, content_ridge=0.0).apply(c)
    torch.testing.assert_close(half, 0.5 * out + 0.5 * c, rtol=1e-4, atol=1e-4)
    assert torch.equal(AffineMap.identity(3).apply(c), c)


def test_statistics_and_map_work_in_either_layout_and_keep_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exported graphs hand back NCHW maps and PyTorch channels-last ones: both must give the same numbers
    without a layout copy, also across several float64 chunks."""
    wct = importlib.import_module("cdcompress.stylization.wct")
    monkeypatch.setattr(wct, "_CHUNK_BYTES", 8 * 6 * 500)  # 500 pixels per chunk
    torch.manual_seed(0)
    nchw = torch.randn(1, 6, 37, 41) * 4 + 7
    nhwc = nchw.contiguous(memory_format=torch.channels_last)
    by_columns, by_rows = FeatureStats.of(nchw), FeatureStats.of(nhwc)
    assert by_columns.count == by_rows.count == 37 * 41
    torch.testing.assert_close(by_columns.covariance(), by_rows.covariance(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(by_columns.mean(), by_rows.mean(), rtol=1e-12, atol=1e-12)
    reference = torch.from_numpy(nchw.reshape(6, -1).double().numpy())
    torch.testing.assert_close(by_columns.covariance(), torch.cov(reference), rtol=1e-9, atol=1e-9)

    mapping = wct_map(by_columns, FeatureStats.of(torch.randn(1, 6, 20, 20) * 2 - 1))
    mapped_nchw, mapped_nhwc = mapping.apply(nchw), mapping.apply(nhwc)
    assert mapped_nchw.is_contiguous() and mapped_nhwc.is_contiguous(memory_format=torch.channels_last)
    expected = torch.einsum("ij,njhw->nihw", mapping.matrix, nchw.double()) + mapping.bias[None, :, None, None]
    torch.testing.assert_close(mapped_nchw.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mapped_nhwc, mapped_nchw, rtol=1e-5, atol=1e-5)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bound(tmp_path: Path) -> None:
    # 16384 x 16384 is above Pillow's default guard (~179 Mpx) but within cdcompress's bound.
    assert image_size(_png_header_only(tmp_path / "big.png", 16384, 16384)) == (16384, 16384)
    with pytest.raises(ImageError, match="above cdcompress's bound"):
        image_size(_png_header_only(tmp_path / "huge.png", 40000, 40000))
    assert Image.MAX_IMAGE_PIXELS != images.MAX_IMAGE_PIXELS  # the guard is restored afterwards


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "CMYK", "P", "exif"])
def test_streamed_decode_equals_load_image(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "BAND_BYTES", 4096)  # many bands
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    if mode == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        path = tmp_path / "x.jpg"
        rgb.save(path, exif=exif.tobytes())
    elif mode == "I;16":
        path = tmp_path / "x.png"
        Image.fromarray(rng.integers(0, 65536, (37, 53), dtype=np.uint16)).save(path)
    else:
        img = rgb.convert("RGBA") if mode == "RGBA" else rgb.convert(mode)
        if mode == "RGBA":
            img.putalpha(Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)))
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
        img.save(path)
    expected = load_image(path)[0].permute(1, 2, 0).numpy()
    canvas = decode_to_canvas(path, lambda shape: DiskCanvas(tmp_path / "c.f32", shape))
    assert canvas.shape == expected.shape == (*image_size(path), 3)
    np.testing.assert_array_equal(canvas.read((0, canvas.shape[0]), (0, canvas.shape[1])), expected)


def test_corrupt_image_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_to_canvas(tmp_path / "bad.png", lambda shape: MemoryCanvas(np.zeros(shape, np.float32)))


def test_streamed_png_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (45, 31, 3), dtype=np.uint8)
    data[10:20] = 7  # flat rows exercise the up/left predictors
    write_png(tmp_path / "o.png", 45, 31, (data[i : i + 8] for i in range(0, 45, 8)))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), data)


def test_statistics_work_inside_and_outside_inference_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reused float64 chunk buffer must not become an inference tensor that a later plain call cannot write."""
    monkeypatch.setattr(importlib.import_module("cdcompress.stylization.wct"), "_SCRATCH", threading.local())
    features = torch.rand(1, 3, 9, 9)
    with torch.inference_mode():
        inside = FeatureStats.of(features).covariance()
    torch.testing.assert_close(FeatureStats.of(features).covariance(), inside)
