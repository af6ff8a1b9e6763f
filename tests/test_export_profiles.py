"""Export profiles (YAML validation, lookup) and TensorRT shape computation: no export, no GPU needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdcompress.export import ExportError, load_profile
from cdcompress.export import profiles as profiles_mod
from cdcompress.export.onnx import Part
from cdcompress.export.profiles import REPO_PROFILE_DIR, TensorRTSettings, parse_profile
from cdcompress.export.tensorrt import engine_shapes, trt_settings

REPO_EXPORT = Path(__file__).resolve().parents[1] / "export"


SHIPPED = sorted(p.stem for p in REPO_EXPORT.glob("*.yaml"))


def shipped_text(name: str) -> str:
    return (REPO_EXPORT / f"{name}.yaml").read_text()


def test_repo_profile_folder_is_found() -> None:
    assert REPO_PROFILE_DIR == REPO_EXPORT
    assert {"onnx-dynamic", "onnx-tile512", "trt-fp16"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_profiles_load_by_name_path_and_installed_copy(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    by_name = load_profile(name)
    assert by_name.source == str(REPO_EXPORT / f"{name}.yaml")
    by_path = load_profile(REPO_EXPORT / f"{name}.yaml")
    assert by_path.to_dict() | {"source": ""} == by_name.to_dict() | {"source": ""}
    share = tmp_path / "share"  # as in a wheel install: data files under <prefix>/share/cdcompress/export
    share.mkdir()
    (share / f"{name}.yaml").write_text(shipped_text(name))
    monkeypatch.setattr(profiles_mod, "REPO_PROFILE_DIR", tmp_path / "absent")
    monkeypatch.setattr(profiles_mod, "SHARE_PROFILE_DIR", share)
    installed = load_profile(name)
    assert installed.to_dict() | {"source": ""} == by_name.to_dict() | {"source": ""}


def test_shipped_profiles_content() -> None:
    dynamic, tile, trt = load_profile("onnx-dynamic"), load_profile("onnx-tile512"), load_profile("trt-fp16")
    assert dynamic.dynamic and dynamic.precision == "fp32" and dynamic.tolerance == 1e-4 and dynamic.opset == 18
    sizes = dynamic.check_sizes
    assert len(sizes) >= 3 and any(h != w for h, w in sizes)
    assert all(h % 16 == 0 and (h // 16) % 2 == 1 and w % 16 == 0 and (w // 16) % 2 == 1 for h, w in sizes)
    assert tile.shape == (512, 512) and tile.check_sizes == ((512, 512),)
    assert trt.precision == "fp16" and trt.tolerance == 1e-2 and trt.tensorrt is not None
    assert (trt.tensorrt.min, trt.tensorrt.opt, trt.tensorrt.max) == ((64, 64), (1024, 1024), (2048, 2048))


def _mutate(base: str, edit: dict) -> str:
    data = yaml.safe_load(shipped_text(base))
    for dotted, value in edit.items():
        node = data
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        if value is _DELETE:
            node.pop(last)
        else:
            node[last] = value
    return yaml.safe_dump(data)


_DELETE = object()
BAD = [
    ("onnx-dynamic", {"onnx.opsett": 18}, "'onnx.opsett'", "did you mean 'opset'"),
    ("onnx-dynamic", {"precison": "fp16"}, "'precison'", "did you mean 'precision'"),
    ("onnx-dynamic", {"onnx.opset": 11}, "'onnx.opset'", "18..23"),
    ("onnx-dynamic", {"onnx.opset": "18"}, "'onnx.opset'", "18..23"),
    ("onnx-dynamic", {"precision": "int8"}, "'precision'", "fp32, fp16"),
    ("onnx-dynamic", {"onnx.shape": [500, 512]}, "'onnx.shape'", "multiples of 16"),
    ("onnx-dynamic", {"onnx.shape": "static"}, "'onnx.shape'", "'dynamic' or [H, W]"),
    ("onnx-dynamic", {"verify.tolerance": 0}, "'verify.tolerance'", "between 0 and 1"),
    ("onnx-dynamic", {"verify.sizes": [[48, 80], [48, 80], [80, 144]]}, "'verify.sizes'", "at least three"),
    ("onnx-dynamic", {"verify.sizes": [[48, 48], [64, 64], [80, 80]]}, "'verify.sizes'", "non-square"),
    ("onnx-dynamic", {"verify.sizes": [[48, 80], [16, 16], [80, 144]]}, "'verify.sizes'", ">= 32"),
    ("onnx-dynamic", {"onnx": _DELETE}, "'onnx'", "add an 'onnx:' section"),
    ("onnx-dynamic", {"onnx": "dynamic"}, "'onnx'", "mapping"),
    ("onnx-tile512", {"verify.sizes": [[48, 80], [112, 48], [80, 144]]}, "'verify.sizes'", "fixed onnx.shape"),
    ("trt-fp16", {"tensorrt.min": [2048, 64]}, "'tensorrt'", "min <= opt <= max"),
    ("trt-fp16", {"tensorrt.opt": _DELETE}, "'tensorrt.opt'", "min, opt and max"),
    ("trt-fp16", {"tensorrt.workspace_mib": 1}, "'tensorrt.workspace_mib'", ">= 64"),
    ("trt-fp16", {"tensorrt.timing_cache": 3}, "'tensorrt.timing_cache'", "true, false or a file path"),
    ("trt-fp16", {"tensorrt.max": [2048, 2047]}, "'tensorrt.max'", "multiples of 16"),
]


@pytest.mark.parametrize(("base", "edit", "key", "fix"), BAD, ids=[f"{b}-{k}-{f[:12]}" for b, _, k, f in BAD])
def test_bad_profiles_fail_with_one_line_naming_file_key_and_fix(base: str, edit: dict, key: str, fix: str,
                                                                  tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_mutate(base, edit))
    with pytest.raises(ExportError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and key in message and fix in message, message


def test_unparseable_and_unknown_profiles(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("onnx: [unclosed\n")
    with pytest.raises(ExportError, match=r"broken\.yaml: not valid YAML at line \d+"):
        load_profile(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ExportError, match="must be a YAML mapping"):
        load_profile(scalar)
    with pytest.raises(ExportError, match=r"unknown profile; use a YAML path or one of \['onnx-dynamic'"):
        load_profile("no-such-profile")
    with pytest.raises(ExportError, match="no such profile file"):
        load_profile(tmp_path / "missing.yaml")


def test_command_line_overrides() -> None:
    base = load_profile("onnx-dynamic")
    tiled = base.with_overrides(tile=(256, 384))
    assert tiled.shape == (256, 384) and tiled.check_sizes == ((256, 384),)
    assert load_profile("onnx-tile512").with_overrides(dynamic=True).dynamic
    half = base.with_overrides(fp16=True)
    assert half.precision == "fp16" and half.tolerance == 1e-2
    with pytest.raises(ExportError, match=r"--tile is \[100, 128\]; sides must be multiples of 16"):
        base.with_overrides(tile=(100, 128))


def test_tensorrt_shapes_per_graph_from_profile() -> None:
    settings = trt_settings(load_profile("trt-fp16"))
    enc5, dec5 = Part("encoder", 5, 128), Part("decoder", 5, 128)
    assert engine_shapes(enc5, settings).to_dict() == {
        "input": "image", "min": [1, 3, 64, 64], "opt": [1, 3, 1024, 1024], "max": [1, 3, 2048, 2048]}
    assert engine_shapes(dec5, settings).to_dict() == {
        "input": "features", "min": [1, 128, 4, 4], "opt": [1, 128, 64, 64], "max": [1, 128, 128, 128]}
    dec1 = engine_shapes(Part("decoder", 1, 24), settings)
    assert (dec1.min, dec1.max) == ((1, 24, 64, 64), (1, 24, 2048, 2048))


def test_tensorrt_shapes_for_tiles_and_errors() -> None:
    tile = load_profile("onnx-tile512").with_overrides(tile=(256, 512))
    settings = trt_settings(tile)
    shapes = engine_shapes(Part("decoder", 3, 64), settings)
    assert shapes.min == shapes.opt == shapes.max == (1, 64, 64, 128)
    with pytest.raises(ExportError, match="needs a 'tensorrt:' section"):
        trt_settings(load_profile("onnx-dynamic"))
    small = TensorRTSettings((32, 32), (512, 512), (1024, 1024))
    assert engine_shapes(Part("encoder", 5, 128), small).min == (1, 3, 32, 32)
    assert engine_shapes(Part("decoder", 5, 128), small).min == (1, 128, 2, 2)
    text = shipped_text("trt-fp16").replace("min: [64, 64]", "min: [32, 32]")
    assert parse_profile(text, "t.yaml", "t").tensorrt.min == (32, 32)
