"""Stylization on the released 16x students: tiled == untiled, alpha 0 == autoencoder, exact statistics, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tqdm.auto import tqdm

import cdcompress
from cdcompress.cli import main
from cdcompress.core.errors import CDCompressError, ModelFormatError
from cdcompress.models import CDModel, load
from cdcompress.stylization import (
    Backend,
    FeatureStats,
    StylizeJob,
    TorchBackend,
    UntiledBackend,
    make_job,
    plan_tiling,
    stylize,
)
from cdcompress.stylization import tiled as tiled_module
from cdcompress.stylization import untiled as untiled_module
from cdcompress.stylization import wct as wct_module
from cdcompress.stylization.canvas import MemoryCanvas
from cdcompress.stylization.tiling import level_geometry, plan_tiles

TOL = 1e-3


@pytest.fixture(scope="module")
def model(released_model_dir: Path) -> CDModel:
    return load(released_model_dir)


def _job(model: CDModel, levels: tuple[int, ...], method: str = "wct", alpha: float = 1.0) -> StylizeJob:
    return make_job(TorchBackend(model), method, levels, alpha, 1e-5)


def test_geometry_follows_the_architecture(model: CDModel) -> None:
    backend = TorchBackend(model)
    expected = {1: (1, 2, 1), 2: (4, 8, 4), 3: (12, 24, 12), 4: (32, 64, 32), 5: (80, 160, 80)}
    for level, (stats, chain, dec) in expected.items():
        geo = level_geometry(*backend.specs(level))
        assert (geo.stats_halo, geo.chain_halo, geo.decoder_halo) == (stats, chain, dec)
        assert geo.stride == 2 ** (level - 1)
    teacher = cdcompress.models.teacher_architecture(levels=(5,))
    assert level_geometry(teacher.encoder(5).spec, teacher.decoder(5).spec).chain_halo == 160  # widths do not matter


def test_tiled_encoder_features_match_untiled(model: CDModel, content: torch.Tensor) -> None:
    """Pass 1 with the computed halo reproduces the untiled level-5 features (measured bit-identical here)."""
    job = _job(model, (5,))
    padded = untiled_module.pad_to_stride(content, 16)
    with torch.inference_mode():
        full = model.encoder(5)(padded)
        for tile in plan_tiles(*padded.shape[-2:], 64, job.geometries[5].stats_halo, 16):
            (r0, r1), (c0, c1) = tile.rows.window, tile.cols.window
            rows, cols = tiled_module.core_slices(tile, 16)
            part = model.encoder(5)(padded[..., r0:r1, c0:c1])[..., rows, cols]
            ref = full[..., tile.rows.core[0] // 16 : tile.rows.core[1] // 16, tile.cols.core[0] // 16 : tile.cols.core[1] // 16]
            assert (part - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_accumulated_statistics_equal_direct(model: CDModel, content: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wct_module, "_CHUNK_BYTES", 97 * 8 * 128)  # many uneven chunks
    for level in (5, 2):
        job = _job(model, (level,))
        with torch.inference_mode():
            features = model.encoder(level)(untiled_module.pad_to_stride(content, job.stride(level)))[0].double()
            flat = features.reshape(features.shape[0], -1)
            direct_mean, direct_cov = flat.mean(dim=1), torch.cov(flat)
            bar = tqdm(disable=True)
            tile = 96 if level == 5 else 48
            tiled = tiled_module.accumulate_stats(job, level, MemoryCanvas.from_tensor(content), tile, None, bar)
        # Same features in uneven chunks: float64 round-off only. Tiled: the tiles' float32 features agree
        # with the untiled ones to float32 round-off (bit-identical for many tile shapes).
        for stats, rtol in ((FeatureStats.of(features), 1e-10), (tiled, 1e-5)):
            assert stats.count == flat.shape[1]
            scale = direct_cov.abs().max().item()
            torch.testing.assert_close(stats.mean(), direct_mean, rtol=rtol, atol=rtol * direct_mean.abs().max().item())
            torch.testing.assert_close(stats.covariance(), direct_cov, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize(
    ("levels", "method", "tile", "cache", "preserve"),
    [
        ((5,), "wct", 64, True, False),
        ((5,), "wct", 96, False, False),
        ((4, 3, 2, 1), "wct", 96, None, True),
        ((4,), "adain", 80, None, False),
    ],
)
def test_tiled_equals_untiled(model: CDModel, content: torch.Tensor, style: torch.Tensor, levels: tuple[int, ...],
                              method: str, tile: int, cache: bool | None, preserve: bool, device: str) -> None:
    kwargs = {"method": method, "levels": levels, "preserve_color": preserve}
    backend = TorchBackend(model, device=device)
    untiled = stylize(backend, content, style, tile=0, **kwargs)
    tiled = stylize(backend, content, style, tile=tile, cache_features=cache, **kwargs)
    assert tiled.shape == untiled.shape == content.shape
    assert (tiled - untiled).abs().max().item() <= TOL
    assert (untiled - content).abs().mean().item() > 0.02  # it did stylize


def test_teacher_cut_encoder_tiles_exactly(content: torch.Tensor, style: torch.Tensor) -> None:
    """A teacher (one level-5 encoder cut per level, full VGG-19 widths) tiles with the same halos."""
    torch.manual_seed(0)
    teacher = cdcompress.models.teacher_architecture(levels=(2, 3)).eval()  # encoder 3 serves level 2 cut
    x, small = content[..., :41, :58], style[..., :40, :40]
    untiled = stylize(teacher, x, small, levels=(2,), tile=0)
    tiled = stylize(teacher, x, small, levels=(2,), tile=16, cache_features=False)
    assert untiled.std().item() > 1e-4  # random weights: a faint but non-constant image, so compare tightly
    assert (tiled - untiled).abs().max().item() <= 1e-5


def test_full_cascade_tiled_from_file_equals_untiled(model: CDModel, images_dir: Path, tmp_path: Path) -> None:
    """Five levels, content decoded from disk into a canvas, float output streamed to .npy."""
    source = Image.open(images_dir / "content/in2.jpg").crop((0, 0, 133, 117))
    source.save(tmp_path / "c.png")
    style_path = images_dir / "style/in3.jpg"
    untiled = stylize(model, tmp_path / "c.png", style_path, style_size=64, tile=0)
    path = stylize(model, tmp_path / "c.png", style_path, style_size=64, tile=80, out=tmp_path / "r.npy",
                   workdir=tmp_path / "scratch")
    tiled = torch.from_numpy(np.load(path)).permute(2, 0, 1)[None]
    assert (tiled - untiled).abs().max().item() <= TOL
    assert list((tmp_path / "scratch").iterdir()) == []  # scratch files removed


def test_alpha_zero_is_the_autoencoder(model: CDModel, content: torch.Tensor, style: torch.Tensor) -> None:
    x = content[..., :144, :176]  # multiples of 16: no stride padding involved
    backend = TorchBackend(model)  # channels-last inputs, as stylize runs them
    with torch.inference_mode():
        expected, plain = x, x
        for level in (5, 3):
            expected = backend.decode(level, backend.encode(level, expected))
            plain = model.decoder(level)(model.encoder(level)(plain))
    expected = expected.clamp(0, 1)
    assert (expected - plain.clamp(0, 1)).abs().max().item() <= 1e-4  # the layout only reorders float sums
    for tile in (0, 96):
        out = stylize(model, x, style, levels=(5, 3), alpha=0.0, tile=tile)
        assert (out - expected).abs().max().item() <= (0.0 if tile == 0 else TOL)


def test_preserve_color_keeps_chroma(model: CDModel, content: torch.Tensor, style: torch.Tensor) -> None:
    out = stylize(model, content, style, levels=(3,), preserve_color=True, tile=0)
    diff = out - content
    inside = ((out > 0.01) & (out < 0.99)).all(dim=1)
    spread = (diff.max(dim=1).values - diff.min(dim=1).values)[inside]
    assert spread.max().item() < 1e-5  # only luminance changed where nothing was clipped


def test_png_and_grid_outputs(model: CDModel, content: torch.Tensor, style: torch.Tensor, tmp_path: Path) -> None:
    expected = stylize(model, content, style, levels=(2,), tile=0)
    out = stylize(model, content, style, levels=(2,), tile=40, out=tmp_path / "o.png", grid=tmp_path / "g.png")
    png = np.asarray(Image.open(out))
    want = (expected[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert png.shape == want.shape and np.abs(png.astype(int) - want).max() <= 1
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (2 * content.shape[-1] + style.shape[-1] * content.shape[-2] // style.shape[-2], content.shape[-2])


def test_auto_tiling_from_budget(model: CDModel) -> None:
    job = _job(model, (5, 4, 3, 2, 1))
    assert plan_tiling(job, 512, 512, (256, 256), None, "64GiB", None) is None
    plan = plan_tiling(job, 16384, 16384, (512, 512), None, "4GiB", None)
    assert plan is not None and all(t % job.stride(k) == 0 and t >= 256 for k, t in plan.tiles.items())
    assert plan.cache[5] and not plan.cache[1]
    with pytest.raises(CDCompressError, match="raise --max-memory"):
        plan_tiling(job, 16384, 16384, (512, 512), None, "10MiB", None)


def test_errors_are_user_errors(model: CDModel, content: torch.Tensor, style: torch.Tensor, tmp_path: Path) -> None:
    two_level = CDModel(encoders={k: model.encoders[k] for k in (1, 2)}, decoders={k: model.decoders[k] for k in (1, 2)})
    with pytest.raises(ModelFormatError, match="level"):  # without levels it uses the model's own (2,1)
        stylize(two_level, content, style, levels=(3, 2, 1))
    with pytest.raises(CDCompressError, match="alpha"):
        stylize(model, content, style, alpha=1.5)
    with pytest.raises(CDCompressError, match="at least 32 px"):
        stylize(model, content[..., :20, :40], style, levels=(5,))
    with pytest.raises(CDCompressError, match=".png"):
        stylize(model, content, style, out=tmp_path / "x.jpg")


class _SpecsUnknown:
    """A user's backend from before ``Backend.specs``: levels, encode and decode only."""

    def __init__(self, inner: TorchBackend) -> None:
        self.inner = inner

    @property
    def levels(self) -> list[int]:
        return self.inner.levels

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        return self.inner.encode(level, image)

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(level, features)


class _SpecsNone(_SpecsUnknown):
    """A backend whose ``specs`` cannot name the architecture."""

    def specs(self, level: int) -> None:
        return None


def test_backend_without_geometry_runs_untiled_only(model: CDModel, content: torch.Tensor, style: torch.Tensor) -> None:
    """No declared architecture: untiled runs work (also when the budget would tile), tiles are a one-line error."""
    expected = stylize(model, content, style, levels=(2,), tile=0)
    cases = ((_SpecsUnknown, r"has no specs\(level\) method"), (_SpecsNone, "does not describe its level-2 architecture"))
    for kind, needle in cases:
        backend = kind(TorchBackend(model))
        assert isinstance(backend, UntiledBackend) and isinstance(backend, Backend) == (kind is _SpecsNone)
        for tile, budget in ((0, None), (None, "1MiB")):
            out = stylize(backend, content, style, levels=(2,), tile=tile, max_memory=budget)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        with pytest.raises(CDCompressError, match=needle) as error:
            stylize(backend, content, style, levels=(2,), tile=64)
        assert "\n" not in str(error.value) and "--tile 0" in str(error.value)


def _run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def _one_line_error(code: int, output: str, needle: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in output, output
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], output


def test_cli_stylize_and_errors(released_model_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    content_path, style_path = images_dir / "content/in2.jpg", images_dir / "style/in4.jpg"
    out = tmp_path / "s.png"
    code, output = _run("stylize", "--model", released_model_dir, "--content", content_path, "--style", style_path,
                        "--levels", "2,1", "--style-size", "64", "--tile", "200", "--grid", "--out", out)
    assert code == 0, output
    assert Image.open(out).size == (420, 420) and Image.open(tmp_path / "s_grid.png").size[0] > 840
    common = ("stylize", "--model", released_model_dir, "--style", style_path, "--out", out)
    _one_line_error(*_run(*common, "--content", tmp_path / "missing.jpg"), "no such image file")
    _one_line_error(*_run(*common, "--content", content_path, "--max-memory", "lots"), "memory size")
    _one_line_error(*_run(*common, "--content", content_path, "--levels", "7"), "--levels")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    _one_line_error(*_run(*common, "--content", tmp_path / "bad.jpg"), "cannot decode")
    _one_line_error(*_run("stylize", "--model", tmp_path / "nomodel", "--content", content_path, "--style", style_path),
                    "no such model")


def test_bf16_networks_stay_close_to_float32_and_leave_the_model_alone(model: CDModel, content: torch.Tensor,
                                                                        style: torch.Tensor) -> None:
    """Half-precision networks (``--precision bf16``) change the result a little, not wholesale; statistics and
    maps stay float64/float32, and the caller's float32 model is not converted under its feet."""
    image = content[..., :96, :128]
    full = stylize(TorchBackend(model), image, style, levels=[3, 2, 1], tile=0)
    half_backend = TorchBackend(model, precision="bf16")
    half = stylize(half_backend, image, style, levels=[3, 2, 1], tile=0)
    assert half.dtype == torch.float32 and half.shape == full.shape
    rms = (half - full).pow(2).mean().sqrt().item()
    assert 0 < rms < 0.03, rms  # measured 0.02 for the five-level cascade at 1024²
    assert next(model.encoder(3).parameters()).dtype == torch.float32
    assert next(half_backend.model.encoder(3).parameters()).dtype == torch.bfloat16
    with pytest.raises(CDCompressError, match="precision 'int4' is not supported"):
        TorchBackend(model, precision="int4")
