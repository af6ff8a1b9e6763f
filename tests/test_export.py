"""`cdcompress export`: verified ONNX bundles, the ONNX Runtime backend, and the TensorRT paths.

Each graph is exported once per session (module-scoped fixtures). TensorRT cannot run here: its
error path is tested for real and its builder calls against a fake ``tensorrt`` module, which checks
the call sequence, not a real engine build.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from cdcompress.cli import main
from cdcompress.core.digest import sha256_file
from cdcompress.export import ExportError, OnnxBackend, export_bundle, load_profile, read_manifest
from cdcompress.export import bundle as bundle_mod
from cdcompress.export import tensorrt as trt_mod
from cdcompress.export.onnx import ParityRow, check_parity, format_parity_table
from cdcompress.models import load
from cdcompress.models.resolve import resolve_model
from cdcompress.stylization.backend import Backend, TorchBackend


def run(*args: Any) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def normalised_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    torch.manual_seed(0)
    return resolve_model("vgg19-x0.25")[0]


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Levels 1 and 2 of a random quarter-width student, dynamic H/W, float32."""
    out = tmp_path_factory.mktemp("tiny") / "bundle"
    export_bundle(tiny_model, out, load_profile("onnx-dynamic"), [1, 2], model_ref="vgg19-x0.25", echo=lambda _: None,
                  progress=False)
    return out


# ----------------------------------------------------------------------------- bundle contents


def test_bundle_manifest_pins_graphs_and_tools(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    assert manifest["levels"] == [1, 2] and manifest["shape"] == "dynamic" and manifest["precision"] == "fp32"
    assert manifest["opset"] == 18 and manifest["input"]["range"] == [0, 1]
    assert sorted(manifest["parts"]) == ["dec1", "dec2", "enc1", "enc2"]
    enc2, dec2 = manifest["parts"]["enc2"], manifest["parts"]["dec2"]
    assert enc2["input"] == {"name": "image", "shape": [1, 3, "height", "width"], "dtype": "float32"}
    assert enc2["output"]["name"] == "features" and enc2["output"]["shape"][:2] == [1, 32]
    assert dec2["input"]["shape"] == [1, 32, "height", "width"] and dec2["output"]["name"] == "image"
    assert enc2["spec"] == {"level": 2, "widths": [16, 16, 32], "padding": "reflect"}
    files = {p.name for p in tiny_bundle.iterdir()}
    assert files == {"manifest.json", "enc1.onnx", "dec1.onnx", "enc2.onnx", "dec2.onnx"}
    for name, entry in manifest["files"].items():
        assert sha256_file(tiny_bundle / name) == entry["sha256"] and (tiny_bundle / name).stat().st_size == entry["bytes"]
    assert {"torch", "onnx", "onnxscript", "onnxruntime", "cdcompress"} <= set(manifest["tools"])
    assert manifest["source_model"]["ref"] == "vgg19-x0.25"
    for part in manifest["parts"].values():  # one self-contained file per graph, valid ONNX
        model = onnx.load(str(tiny_bundle / part["file"]), load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not [p for p in tiny_bundle.parent.iterdir() if p.name.startswith(".")], "staging directory left behind"
    plain = tiny_bundle.parent / "plain"
    plain.mkdir()
    assert tiny_bundle.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkdtemp's 0700
    plain.rmdir()


def test_parity_table_covers_three_sizes_per_graph(tiny_bundle: Path) -> None:
    rows = read_manifest(tiny_bundle)["verification"]["rows"]
    for name in ("enc1", "dec1", "enc2", "dec2"):
        mine = [r for r in rows if r["part"] == name]
        sizes = {tuple(r["image"]) for r in mine}
        assert len(sizes) >= 3 and any(h != w for h, w in sizes)
        assert any((h // 16) % 2 and (w // 16) % 2 for h, w in sizes)  # odd multiples of the stride
        assert all(r["ok"] and r["error"] <= 1e-4 for r in mine), mine


def test_onnx_backend_matches_pytorch_at_unseen_odd_sizes(tiny_bundle: Path, tiny_model: Any, device: str) -> None:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None
    backend, reference = OnnxBackend(tiny_bundle, providers=providers), TorchBackend(tiny_model)
    assert isinstance(backend, Backend) and backend.levels == [1, 2] and backend.providers[-1] == "CPUExecutionProvider"
    assert backend.encoder_spec(2) == tiny_model.encoder(2).spec and backend.decoder_spec(1) == tiny_model.decoder(1).spec
    assert backend.specs(2) == reference.specs(2) == (tiny_model.encoder(2).spec, tiny_model.decoder(2).spec)
    generator = torch.Generator().manual_seed(1)
    for h, w in ((36, 100), (50, 70), (64, 64)):
        image = torch.rand((1, 3, h, w), generator=generator)
        for level in (1, 2):
            features = backend.encode(level, image)
            assert features.dtype == torch.float32 and normalised_error(features, reference.encode(level, image)) <= 1e-4
            decoded = backend.decode(level, features)
            assert normalised_error(decoded, reference.decode(level, features)) <= 1e-4
    with pytest.raises(ExportError, match="bundle has no graph enc3"):
        backend.encode(3, image)


def test_corrupt_or_foreign_bundles_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "dec1.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "dec1.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"dec1\.onnx: checksum mismatch"):
        OnnxBackend(copy)
    assert OnnxBackend(copy, verify=False).levels == [1, 2]
    shutil.copy(tiny_bundle / "dec1.onnx", copy / "dec1.onnx")
    (copy / "enc2.onnx").unlink()
    with pytest.raises(ExportError, match=r"enc2\.onnx: listed in the manifest but missing"):
        read_manifest(copy)
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ExportError, match="format version 99 is not supported"):
        read_manifest(copy)
    with pytest.raises(ExportError, match="not an export bundle"):
        read_manifest(tmp_path)


def test_existing_output_and_bad_levels_fail_before_exporting(tiny_model: Any, tiny_bundle: Path) -> None:
    profile = load_profile("onnx-dynamic")
    with pytest.raises(ExportError, match="already exists; choose another --out or pass --force"):
        export_bundle(tiny_model, tiny_bundle, profile, [1])
    code, out = run("export", "vgg19-x0.25", "--levels", "6", "--out", tiny_bundle.parent / "x")
    assert code == 2 and out.startswith("error: --levels '6'") and "Traceback" not in out


def test_missing_optional_dependencies_are_one_line(tiny_model: Any, tiny_bundle: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r"ONNX export needs onnxscript; install with `pip install 'cdcompress\[export\]'`"):
        export_bundle(tiny_model, tmp_path / "b", load_profile("onnx-dynamic"), [1])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match="running a bundle needs onnxruntime"):
        OnnxBackend(tiny_bundle)
    assert not (tmp_path / "b").exists()


def test_failed_parity_writes_nothing(tiny_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_export(module: Any, part: Any, path: Path, *args: Any) -> dict:
        path.write_bytes(b"graph")
        return {"input": {}, "output": {}}

    def fake_verify(session: Any, module: Any, part: Any, cases: Any, tolerance: float) -> list[ParityRow]:
        return [ParityRow(part.name, (48, 80), (1, 3, 48, 80), 5e-3 if part.role == "decoder" else 1e-6, 1.0, tolerance)]

    monkeypatch.setattr(bundle_mod, "export_graph", fake_export)
    monkeypatch.setattr(bundle_mod, "verify_graph", fake_verify)
    monkeypatch.setattr(bundle_mod, "make_session", lambda path: None)
    lines: list[str] = []
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=r"parity check failed for 1 of 2 cases \(dec1 at 48x80: 5.00e-03 > 1e-04\)"):
        export_bundle(tiny_model, out, load_profile("onnx-dynamic"), [1], echo=lines.append, progress=False)
    assert "| dec1 | 48x80 | 1x3x48x80 | 5.00e-03 |" in lines[0] and "| NO |" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_tables_are_logged_not_printed(tiny_model: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Library code logs, the CLI prints: without ``echo`` the parity table goes to the module's logger."""
    import logging

    with caplog.at_level(logging.INFO, logger="cdcompress.export.bundle"):
        export_bundle(tiny_model, tmp_path / "bundle", load_profile("onnx-dynamic"), [1], progress=False)
    assert capsys.readouterr().out == ""
    assert any("| enc1 |" in record.getMessage() for record in caplog.records)


def test_torchlib_registry_reuse_still_reaches_torch() -> None:
    """`reuse_torchlib_registry` patches private torch.onnx API (it halves export time). If torch moves it, the
    patch silently does nothing: this test is where that shows."""
    from torch.onnx._internal.exporter import _registration

    from cdcompress.export.onnx import reuse_torchlib_registry

    original = _registration.ONNXRegistry.__dict__["from_torchlib"]
    with reuse_torchlib_registry():
        assert _registration.ONNXRegistry.__dict__["from_torchlib"] is not original
        first = _registration.ONNXRegistry.from_torchlib()
        assert _registration.ONNXRegistry.from_torchlib() is first  # built once, then reused
    assert _registration.ONNXRegistry.__dict__["from_torchlib"] is original


def test_parity_metric_scales_only_large_outputs() -> None:
    small = ParityRow("dec1", (48, 80), (1, 16, 48, 80), 2e-4, 0.9, 1e-4)
    large = ParityRow("enc2", (48, 80), (1, 3, 48, 80), 2e-4, 150.0, 1e-4)
    assert not small.ok and small.error == 2e-4
    assert large.ok and large.error == pytest.approx(2e-4 / 150)
    assert not ParityRow("enc1", (48, 80), (1, 3, 48, 80), float("nan"), 1.0, 1e-4).ok
    check_parity([large])
    assert format_parity_table([large]).splitlines()[2].startswith("| enc2 | 48x80 | 1x3x48x80 | 2.00e-04 | 150 |")


# ----------------------------------------------------------------------------- TensorRT


def test_trt_without_tensorrt_or_gpu_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on this machine
    monkeypatch.setattr(trt_mod, "cuda_devices", lambda: (0, "no NVIDIA driver was found (libcuda)"))
    code, out = run("export", "vgg19-x0.25", "--trt", "--out", tmp_path / "b")
    assert code == 2 and "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --trt needs TensorRT and an NVIDIA GPU"), out
    assert "pip install tensorrt" in lines[0] and "no CUDA GPU" in lines[0] and "drop --trt" in lines[0]
    assert not (tmp_path / "b").exists()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.9.0", []))
    code, out = run("export", "vgg19-x0.25", "--trt", "--out", tmp_path / "b")
    assert code == 2 and "no CUDA GPU is available" in out and "not installed" not in out


def test_cuda_probe_agrees_with_torch_where_torch_can_tell() -> None:
    """The probe asks the NVIDIA driver, not torch; where torch sees GPUs they must agree, and without a GPU the
    probe must say why in words (what --trt then prints)."""
    count, why = trt_mod.cuda_devices()
    if torch.cuda.is_available():
        assert count == torch.cuda.device_count() and why == ""
    else:  # no GPU, or a CPU-only torch on a GPU machine: then the driver's count stands, with no reason given
        assert (count == 0 and len(why) > 10) or (count > 0 and why == ""), (count, why)


def _fake_tensorrt(version: str, calls: list[tuple]) -> types.ModuleType:
    """Records builder calls; parses nothing but checks it is handed a valid ONNX model."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])

    class Logger:
        WARNING = "warning"

        def __init__(self, severity: str) -> None:
            calls.append(("Logger", severity))

    class Parser:
        num_errors = 0

        def __init__(self, network: Any, logger: Any) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            model = onnx.load_from_string(data)
            calls.append(("parse", model.graph.input[0].name,
                          sorted({onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer})))
            return True

    class Cache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+"

    class Profile:
        def set_shape(self, name: str, *shapes: tuple) -> None:
            calls.append(("set_shape", name, *shapes))

    class Config:
        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            calls.append(("pool", pool, size))

        def set_flag(self, flag: str) -> None:
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile: Profile) -> None:
            calls.append(("profile",))

        def create_timing_cache(self, data: bytes) -> Cache:
            self.cache = Cache(bytes(data))
            return self.cache

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            calls.append(("timing_cache", cache.data, ignore_mismatch))
            return True

        def get_timing_cache(self) -> Cache:
            return self.cache

    class Builder:
        def __init__(self, logger: Any) -> None:
            pass

        def create_network(self, flags: int) -> str:
            calls.append(("create_network", flags))
            return "network"

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: str, config: Config) -> bytes:
            calls.append(("build",))
            return b"engine"

    flags = {"STRONGLY_TYPED": 1} | ({"EXPLICIT_BATCH": 0} if major < 11 else {})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "fp16"} if major < 11 else {"DEBUG": "debug"}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    return trt


@pytest.fixture(scope="module")
def tile_trt_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[tuple]]:
    """``export --trt --fp16 --tile 32 48 --levels 1`` through the CLI, against a fake TensorRT 11."""
    calls: list[tuple] = []
    out = tmp_path_factory.mktemp("trt") / "bundle"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", _fake_tensorrt("11.1.0", calls))
        patch.setattr(trt_mod, "cuda_devices", lambda: (1, ""))
        torch.manual_seed(0)
        code, text = run("export", "vgg19-x0.25", "--onnx", "--trt", "--fp16", "--levels", "1", "--tile", "32", "48",
                         "--out", out, "--quiet")
    assert code == 0, text
    return out, text, calls


def test_cli_fixed_tile_fp16_graphs_are_valid_and_verified(tile_trt_bundle: tuple[Path, str, list]) -> None:
    out, text, _ = tile_trt_bundle
    assert "| enc1 | 32x48 | 1x3x32x48 |" in text and "| NO |" not in text and f"wrote {out}" in text
    manifest = read_manifest(out)
    assert manifest["shape"] == [32, 48] and manifest["precision"] == "fp16"
    assert manifest["verification"]["tolerance"] == 1e-2 and manifest["profile"]["name"] == "trt-fp16"
    assert manifest["parts"]["dec1"]["input"]["shape"] == [1, 16, 32, 48]
    for name in ("enc1", "dec1"):
        model = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        weights = {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer if len(t.dims) == 4}
        assert weights == {"FLOAT16"}
        assert manifest["parts"][name]["input"]["dtype"] == manifest["parts"][name]["output"]["dtype"] == "float32"
    rows = manifest["verification"]["rows"]
    assert len(rows) == 6 and all(r["ok"] for r in rows) and max(r["error"] for r in rows) > 1e-5  # really half precision
    backend = OnnxBackend(out)
    image = torch.rand(1, 3, 32, 48)
    torch.manual_seed(0)
    reference = TorchBackend(resolve_model("vgg19-x0.25")[0])
    assert normalised_error(backend.encode(1, image), reference.encode(1, image)) <= 1e-2
    with pytest.raises(ExportError, match=r"fixed to 32x48 tiles, got a 48x32 input.*export with --dynamic"):
        backend.encode(1, torch.rand(1, 3, 48, 32))
    code, text = run("export", "vgg19-x0.25", "--tile", "32", "48", "--dynamic", "--out", out.parent / "x")
    assert code == 2 and "exclude each other" in text


def test_tensorrt11_build_is_strongly_typed_from_fp16_onnx(tile_trt_bundle: tuple[Path, str, list]) -> None:
    out, _, calls = tile_trt_bundle
    manifest = read_manifest(out)
    engines = manifest["engines"]["engines"]
    assert manifest["tools"]["tensorrt"] == "11.1.0" and sorted(engines) == ["dec1", "enc1"]
    assert engines["enc1"]["fp16_mode"] == "strongly-typed" and engines["enc1"]["file"] == "enc1.engine"
    assert (out / "enc1.engine").read_bytes() == b"engine" and "enc1.engine" in manifest["files"]
    assert manifest["engines"]["timing_cache"] == "trt-timing.cache" and (out / "trt-timing.cache").read_bytes() == b"++"
    assert ("flag", "fp16") not in calls
    assert [c for c in calls if c[0] == "create_network"] == [("create_network", 1 << 1)] * 2
    parsed = {c[1]: c[2] for c in calls if c[0] == "parse"}
    assert sorted(parsed) == ["features", "image"] and all("FLOAT16" in v and "FLOAT" not in v for v in parsed.values())
    assert ("set_shape", "image", *[(1, 3, 32, 48)] * 3) in calls  # a fixed tile: min = opt = max
    assert ("set_shape", "features", *[(1, 16, 32, 48)] * 3) in calls
    assert ("pool", "workspace", 4096 << 20) in calls
    assert [c for c in calls if c[0] == "timing_cache"] == [("timing_cache", b"", False), ("timing_cache", b"+", False)]
    order = [c[0] for c in calls if c[0] in ("create_network", "parse", "pool", "profile", "timing_cache", "build")]
    assert order[:6] == ["create_network", "parse", "pool", "profile", "timing_cache", "build"]


def test_tensorrt10_build_uses_the_fp16_builder_flag(tile_trt_bundle: tuple[Path, str, list], tmp_path: Path) -> None:
    source, _, _ = tile_trt_bundle
    calls: list[tuple] = []
    trt = _fake_tensorrt("10.9.0", calls)
    work = tmp_path / "b"
    shutil.copytree(source, work)
    profile = load_profile("trt-fp16")
    parts = [bundle_mod.Part("encoder", 1, 16), bundle_mod.Part("decoder", 1, 16)]
    result = trt_mod.build_engines(trt, work, parts, profile, progress=False)
    assert [c for c in calls if c[0] == "flag"] == [("flag", "fp16")] * 2
    assert [c for c in calls if c[0] == "create_network"] == [("create_network", 0)] * 2
    assert ("set_shape", "image", (1, 3, 64, 64), (1, 3, 1024, 1024), (1, 3, 2048, 2048)) in calls
    assert ("set_shape", "features", (1, 16, 64, 64), (1, 16, 1024, 1024), (1, 16, 2048, 2048)) in calls
    assert result["engines"]["dec1"]["fp16_mode"] == "builder-flag" and result["tensorrt_version"] == "10.9.0"
    calls.clear()
    trt_mod.build_engines(trt, work, parts, dataclasses.replace(profile, precision="fp32"), progress=False)
    assert not [c for c in calls if c[0] == "flag"] and [c for c in calls if c[0] == "create_network"][0][1] == 0
    assert (work / "trt-timing.cache").read_bytes().startswith(b"++")  # the shared cache kept growing


# ----------------------------------------------------------------------------- released 16x students


@pytest.fixture(scope="module")
def released_bundle(released_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All five levels of the converted release, exported once through the CLI."""
    out = tmp_path_factory.mktemp("release") / "cd16x-bundle"
    code, text = run("export", released_model_dir, "--onnx", "--out", out, "--quiet")
    assert code == 0, text
    (out.parent / "parity.md").write_text(text)
    return out


@pytest.mark.slow  # shares the ~40-60 s export of all ten released graphs
def test_released_students_verify_at_three_sizes(released_bundle: Path, released_model_dir: Path) -> None:
    manifest = read_manifest(released_bundle)
    assert manifest["levels"] == [1, 2, 3, 4, 5] and len(manifest["parts"]) == 10
    rows = manifest["verification"]["rows"]
    for level in range(1, 6):
        for role in ("enc", "dec"):
            mine = [r for r in rows if r["part"] == f"{role}{level}"]
            assert len({tuple(r["image"]) for r in mine}) >= 3 and all(r["ok"] for r in mine)
            assert max(r["max_abs"] for r in mine) <= 1e-4, mine  # also within 1e-4 without the peak scaling
    assert manifest["parts"]["enc1"]["output"]["shape"][:2] == [1, 24]  # se1's 24-filter conv11
    assert manifest["source_model"]["model_json_sha256"] == sha256_file(released_model_dir / "model.json")
    assert "| enc5 | 112x48 | 1x3x112x48 |" in (released_bundle.parent / "parity.md").read_text()


@pytest.mark.slow  # shares the ~40-60 s export of all ten released graphs
def test_released_bundle_is_smaller_than_the_checkpoint(released_bundle: Path, released_model_dir: Path) -> None:
    checkpoint = sum(p.stat().st_size for p in released_model_dir.glob("*.safetensors"))
    graphs = sum(p.stat().st_size for p in released_bundle.glob("*.onnx"))
    assert graphs < checkpoint  # the checkpoint also holds the training-only embedding branches


@pytest.mark.slow  # shares the ~40-60 s export of all ten released graphs
def test_bundle_stylizes_like_pytorch_untiled_and_tiled(released_bundle: Path, released_model_dir: Path,
                                                        images_dir: Path) -> None:
    from cdcompress.data.images import load_image
    from cdcompress.stylization import stylize

    content = load_image(images_dir / "content" / "in2.jpg")[..., :144, :176]
    style = load_image(images_dir / "style" / "in3.jpg")[..., :96, :112]
    onnx_backend, torch_backend = OnnxBackend(released_bundle), TorchBackend(load(released_model_dir))
    want = stylize(torch_backend, content, style, method="wct", tile=0)
    for tile in (0, 96):  # 96: several tiles at the shallow levels, whole-image windows at level 5
        got = stylize(onnx_backend, content, style, method="wct", tile=tile)
        assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-3, tile
    adain = stylize(onnx_backend, content, style, method="adain", tile=0)
    assert float((adain - stylize(torch_backend, content, style, method="adain", tile=0)).abs().max()) <= 1e-3
    assert np.isfinite(want.numpy()).all()


@pytest.mark.slow  # shares the ~40-60 s export of all ten released graphs
def test_cli_stylize_from_bundle(released_bundle: Path, released_model_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    content, style = images_dir / "content" / "in2.jpg", images_dir / "style" / "in3.jpg"
    common = ["--content", content, "--style", style, "--levels", "4,1", "--style-size", "128", "--tile", "0"]
    code, text = run("stylize", "--bundle", released_bundle, *common, "--out", tmp_path / "bundle.npy")
    assert code == 0 and "wrote" in text, text
    code, text = run("stylize", "--model", released_model_dir, *common, "--out", tmp_path / "torch.npy")
    assert code == 0, text
    got, want = np.load(tmp_path / "bundle.npy"), np.load(tmp_path / "torch.npy")
    assert got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-3
    for extra in (["--model", released_model_dir, "--bundle", released_bundle], []):
        code, text = run("stylize", *extra, *common, "--out", tmp_path / "x.npy")
        assert code == 2 and text.strip() == "error: pass exactly one of --model DIR and --bundle DIR", text


_RSS_PROBE = """
import sys, torch
from cdcompress.export import OnnxBackend, runtime
from cdcompress.stylization import stylize
if sys.argv[2] == "own":  # each session with an arena of its own (onnxruntime's default)
    runtime._share_cpu_arena = lambda ort, options: None
image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
stylize(OnnxBackend(sys.argv[1], threads=1), image, image[..., :256, :256], tile=0)
# VmHWM is this program's own peak: ru_maxrss would also count the forking parent's (pytest's) resident set.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


@pytest.mark.slow  # shares the ~40-60 s export of all ten released graphs
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak resident set from /proc")
def test_bundle_sessions_share_one_arena(released_bundle: Path) -> None:
    """Ten sessions with an arena each keep ten activation peaks; one shared arena keeps about one."""
    import subprocess
    import sys

    def peak_rss(mode: str) -> int:
        proc = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(released_bundle), mode], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return int(proc.stdout.split()[-1])

    shared, own = peak_rss("shared"), peak_rss("own")
    assert shared < 0.75 * own, (shared, own)  # measured at 1024²: 1.6 vs 5.1 GiB
