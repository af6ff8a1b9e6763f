"""`eval style` / `eval cost` and the metrics behind them: Gram distances and cost measurements."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cdcompress.cli import main
from cdcompress.core.errors import CDCompressError
from cdcompress.cost.measure import (
    PairedTiming,
    RunMeasurement,
    _bisect_side,
    fit_linear,
    max_untiled_side,
    measure_pairs,
    measure_stylize,
    planned_max_sides,
)
from cdcompress.cost.static import count_macs, stylize_cost
from cdcompress.evaluation.evaluate import load_scaled, mean_style, style_evaluation
from cdcompress.evaluation.gram import evaluation_encoder, gram, gram_distance, style_distances
from cdcompress.models.resolve import resolve_model
from cdcompress.stylization import stylize
from cdcompress.surgery.modules import count_parameters


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(map(str, args)))
    return result.exit_code, result.output


def assert_one_line_error(code: int, output: str, needle: str) -> None:
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], output


@pytest.fixture(scope="module")
def student_ruler() -> torch.nn.Module:
    torch.manual_seed(0)
    return evaluation_encoder(resolve_model("vgg19-x0.25")[0])


# ----------------------------------------------------------------------------- Gram metric


def test_gram_normalisation_by_hand() -> None:
    f = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 1.0]]]])  # C=2, H=W=2
    g = gram(f)[0]
    assert g.dtype == torch.float64
    # <f0, f0> = 6, <f0, f1> = 4, <f1, f1> = 11, each divided by C*H*W = 8
    assert torch.allclose(g, torch.tensor([[6.0, 4.0], [4.0, 11.0]], dtype=torch.float64) / 8)
    h = f.clone()
    h[0, 1, 0, 0] = 0.0  # <f0,f1> = 1, <f1,f1> = 2: differences -3/8 (twice) and -9/8
    assert gram_distance(f, h) == pytest.approx((2 * 9 + 81) / 64)


def test_gram_distance_zero_for_itself_symmetric_and_size_free(student_ruler: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen) ** 3
    levels = [1, 2, 3, 4, 5]
    assert all(v == 0.0 for v in style_distances(student_ruler, a, a, levels).values())
    ab, ba = style_distances(student_ruler, a, b, levels), style_distances(student_ruler, b, a, levels)
    assert all(ab[k] > 0 and ab[k] == pytest.approx(ba[k], rel=1e-12) for k in levels)
    tiled = a.repeat(1, 1, 2, 2)  # same statistics, 4x the pixels: only borders differ
    assert style_distances(student_ruler, tiled, a, [1])[1] < 0.01 * ab[1]


def test_style_evaluation_on_release(released_model_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    model = resolve_model(released_model_dir)[0]
    ruler = evaluation_encoder(model)
    content = images_dir / "content" / "in1.jpg"
    styles = [images_dir / "style" / "in1.jpg", images_dir / "style" / "in3.jpg"]
    results = style_evaluation(model, [content], styles, ruler, levels=[5, 4, 3], max_side=96)
    assert [list(r.gram) for r in results] == [["conv1", "conv2", "conv3", "conv4", "conv5"]] * 2
    c = load_scaled(content, 96)
    s0, s1 = load_scaled(styles[0], 96), load_scaled(styles[1], 96)
    levels = [1, 2, 3, 4, 5]
    r0 = stylize(model, c, s0, levels=[5, 4, 3], tile=0)
    assert style_distances(ruler, r0, s0, levels) == pytest.approx({int(k[4]): v for k, v in results[0].gram.items()})
    # stylizing moves the content towards its style; the result stays farther from the other style
    assert sum(results[0].gram.values()) < sum(style_distances(ruler, c, s0, levels).values())
    assert sum(results[0].gram.values()) < sum(style_distances(ruler, r0, s1, levels).values())
    assert all(r.content_distance > 0 for r in results)
    means = mean_style(results)
    assert means["conv2"] == pytest.approx((results[0].gram["conv2"] + results[1].gram["conv2"]) / 2)

    content_dir, style_dir = tmp_path / "c", tmp_path / "s"
    content_dir.mkdir(), style_dir.mkdir()
    shutil.copy(content, content_dir)
    shutil.copy(styles[0], style_dir / "s.jpg")
    code, out = run("eval", "style", released_model_dir, "--content", content_dir, "--style", style_dir,
                    "--eval-encoder", released_model_dir, "--levels", "5,4,3", "--max-side", "96",
                    "--json", tmp_path / "style.json")
    assert code == 0, out
    assert "| Gram conv1 |" in out and "**mean**" in out
    data = json.loads((tmp_path / "style.json").read_text())
    assert len(data["pairs"]) == 1 and data["pairs"][0]["style"].endswith("s.jpg")
    assert data["mean"]["conv5"] == pytest.approx(results[0].gram["conv5"], rel=1e-6)


# ----------------------------------------------------------------------------- cost


def test_cost_cli_matches_counters(tmp_path: Path) -> None:
    code, out = run("eval", "cost", "vgg19-x0.25", "--levels", "3,2,1", "--size", "256", "--time-size", "0",
                    "--probe-sizes", "", "--json", tmp_path / "cost.json")
    assert code == 0, out
    static = json.loads((tmp_path / "cost.json").read_text())["static"]
    model = resolve_model("vgg19-x0.25")[0]
    enc = [model.encoder(k) for k in (3, 2, 1)]
    dec = [model.decoder(k) for k in (3, 2, 1)]
    assert static["parameters"] == sum(map(count_parameters, enc + dec))
    assert static["encoder_parameters_per_level"] == sum(map(count_parameters, enc))
    assert static["encoder_macs"] == sum(count_macs(e, (1, 3, 256, 256)) for e in enc)
    dec_macs = sum(count_macs(d, (1, d.spec.widths[-1], 256 // 2 ** (k - 1), 256 // 2 ** (k - 1)))
                   for d, k in zip(dec, (3, 2, 1), strict=True))
    assert static["macs"] == static["encoder_macs"] + dec_macs
    assert static["bytes_on_disk"] > 4 * static["parameters"]
    assert f"| parameters (stored encoders + decoders) | {static['parameters']:,} |" in out


def test_teacher_cost_matches_paper_table3() -> None:
    """The paper's 17.1M parameters and 6961.7 'GFLOPs' at 3000² are per-level encoders and their MACs."""
    cost = stylize_cost(resolve_model("vgg19")[0], [5, 4, 3, 2, 1], 3000)
    assert round(cost.encoder_parameters_per_level / 1e6, 1) == 17.1
    assert round(cost.encoder_macs / 1e9) == 6962


def test_measured_run_and_max_side(tmp_path: Path) -> None:
    m = measure_stylize("vgg19-x0.25", 64, [2, 1], threads=1, repeats=2)
    assert m.wall_s > 0 and m.peak_rss >= m.base_rss > 0 and not m.tiled
    assert len(m.walls) == 2 and m.wall_s == min(m.walls)
    # synthetic probes on an exact line: 100 MB + 1 kB per pixel -> side sqrt((budget - 100MB) / 1kB)
    probes = [RunMeasurement(s, False, 1, 1.0, 100_000_000 + 1000 * s * s, 0) for s in (256, 512, 1024)]
    assert fit_linear([(float(p.size**2), float(p.peak_rss)) for p in probes]) == pytest.approx((1e8, 1000.0))
    side = max_untiled_side("vgg19-x0.25", [1], 1_100_000_000, probes).side
    assert side == 1000 // 16 * 16
    assert max_untiled_side("x", [1], 1 << 30, [RunMeasurement(s, False, 1, 1, 5, 0) for s in (1, 2)]).side is None
    assert _bisect_side(lambda s: s <= 1000, 1 << 16) == 992 and _bisect_side(lambda s: False, 4096) == 0
    untiled, tiled = planned_max_sides(resolve_model("vgg19-x0.25")[0], [5, 4, 3, 2, 1], 8 << 30, workdir=tmp_path)
    small, _ = planned_max_sides(resolve_model("vgg19-x0.25")[0], [5, 4, 3, 2, 1], 2 << 30, workdir=tmp_path)
    assert 0 < small.side < untiled.side <= tiled.side


def test_interleaved_pairs() -> None:
    """Both models really run in turns (untiled and tiled), one ratio per round, and the median is the median."""
    for tile in (0, 32):
        pairs = measure_pairs("vgg19-x0.5", "vgg19-x0.25", 64, [2, 1], rounds=2, tile=tile, threads=1)
        assert pairs.tiled == bool(tile) and len(pairs.first) == len(pairs.second) == len(pairs.ratios) == 2
        assert all(t > 0 for t in pairs.first + pairs.second)
    assert PairedTiming(8, False, 1, [6.0, 2.0, 9.0], [1.0, 1.0, 1.0]).median_ratio == 6.0
    assert PairedTiming(8, False, 1, [6.0, 2.0], [1.0, 1.0]).median_ratio == 4.0
    with pytest.raises(CDCompressError, match="paired timing"):
        measure_pairs("vgg19-x0.25", "no-such-model", 64, [1], rounds=1)


def test_runtimes_compared_in_one_interleaved_run(tmp_path: Path) -> None:
    """Teacher and student stylize on each runtime (eager, exported bundle, its INT8 copy, bf16): every cell a real
    median, the bundle's export and the INT8 gate really ran, and the JSON carries the same numbers."""
    code, out = run("eval", "cost", "vgg19-x0.25", "--teacher", "vgg19-x0.5", "--levels", "2,1", "--time-size", "64",
                    "--threads", "1", "--runtimes", "eager,bundle,int8,bf16", "--json", tmp_path / "runtimes.json")
    assert code == 0, out
    data = json.loads((tmp_path / "runtimes.json").read_text())
    assert [r["runtime"] for r in data["rows"]] == ["eager", "bundle", "int8", "bf16"]
    for row in data["rows"]:
        assert row["seconds"]["teacher"] > 0 and row["seconds"]["student"] > 0, row
        t, s = row["seconds"]["teacher"], row["seconds"]["student"]
        assert f"**{t / s:.2f}x**" in out
    assert "int8 levels" in data["rows"][2]["note"] and "fastest teacher / fastest student" in out
    assert_one_line_error(*run("eval", "cost", "vgg19-x0.25", "--runtimes", "eager,tpu"), "unknown ['tpu']")
    if not torch.cuda.is_available():
        assert_one_line_error(*run("eval", "cost", "vgg19-x0.25", "--runtimes", "cuda"), "need a CUDA GPU")


def test_eval_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run("eval", "style", "vgg19-x0.25", "--content", tmp_path / "nope", "--style", tmp_path,
                               "--eval-encoder", "vgg19-x0.25"), "no such directory")
    assert_one_line_error(*run("eval", "style", "vgg19-x0.25", "--content", tmp_path / "empty", "--style", tmp_path,
                               "--eval-encoder", "vgg19-x0.25"), "no images")
    assert_one_line_error(*run("eval", "cost", tmp_path / "nope"), "no such model directory")
    assert_one_line_error(*run("eval", "cost", "vgg19-x0.25", "--max-memory", "lots"), "memory size")
    assert_one_line_error(*run("eval", "cost", "vgg19-x0.25", "--probe-sizes", "a,b"), "--probe-sizes")
    assert_one_line_error(*run("eval", "cost", "vgg19-x0.25", "--levels", "6"), "--levels")


def test_eval_levels_beyond_the_ruler(images_dir: Path, tmp_path: Path) -> None:
    shallow = resolve_model("vgg19-x0.25")[0]
    shallow.encoders = {3: shallow.encoders[3]}
    ruler = evaluation_encoder(shallow)

    with pytest.raises(CDCompressError, match="stops at relu3_1"):
        style_evaluation(shallow, [images_dir / "content/in1.jpg"], [images_dir / "style/in1.jpg"], ruler,
                         gram_levels=[4], max_side=64)
