"""Export profiles: small YAML files that say how to export (shapes, precision, checks, TensorRT).

A profile is referenced by path or by name. Names are looked up, in order, in the repository's
top-level ``export/`` folder (present in a source checkout or an editable install), then in
``<sys.prefix>/share/cdcompress/export`` (where a wheel installs them as data files), so
``--profile onnx-dynamic`` works from any install. Every problem is one
:class:`ExportError` line naming the file, the key and the fix.

Schema (all keys but ``onnx.shape`` optional)::

    description: free text
    onnx:
      opset: 18                      # 18..23; 18 is torchlib's native opset (no version conversion)
      shape: dynamic                 # or [H, W]: every graph fixed to one image tile
    precision: fp32                  # fp32 | fp16 (half-precision compute; graph inputs/outputs stay float32)
    verify:
      sizes: [[48, 80], [112, 48], [80, 144]]   # image H W checked against PyTorch (dynamic graphs)
      tolerance: 1.0e-4              # on max|onnx - torch| / max(1, max|torch|); default 1e-4 fp32, 1e-2 fp16
    tensorrt:                        # needed for --trt; image H W, decoders get H/stride W/stride
      min: [64, 64]
      opt: [1024, 1024]
      max: [2048, 2048]
      workspace_mib: 4096
      timing_cache: true             # true (kept in the bundle), false, or a file path shared across builds
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ExportError

#: Largest encoder stride (level 5): image sizes must be multiples of it so every level maps back exactly.
MAX_STRIDE = 16
#: Smallest image side a level-5 encoder accepts (reflection padding needs 2 pixels at 1/16 scale).
MIN_SIDE = 32
OPSETS = range(18, 24)
PRECISIONS = ("fp32", "fp16")
DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
#: Non-square, odd multiples of the level-5 stride (3x5, 7x3, 5x9 times 16): catches stride/rounding bugs.
DEFAULT_VERIFY_SIZES: tuple[tuple[int, int], ...] = ((48, 80), (112, 48), (80, 144))
REPO_PROFILE_DIR = Path(__file__).resolve().parents[2] / "export"
SHARE_PROFILE_DIR = Path(sys.prefix) / "share" / "cdcompress" / "export"

_KEYS: dict[str, tuple[str, ...]] = {
    "": ("description", "onnx", "precision", "verify", "tensorrt"),
    "onnx": ("opset", "shape"),
    "verify": ("sizes", "tolerance"),
    "tensorrt": ("min", "opt", "max", "workspace_mib", "timing_cache"),
}


@dataclass(frozen=True)
class TensorRTSettings:
    """Optimisation-profile image shapes (H, W) and builder limits for TensorRT engines."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]
    workspace_mib: int = 4096
    timing_cache: bool | str = True

    def to_dict(self) -> dict[str, Any]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max),
                "workspace_mib": self.workspace_mib, "timing_cache": self.timing_cache}


@dataclass(frozen=True)
class ExportProfile:
    """A validated export profile; ``shape`` is ``None`` for dynamic height/width."""

    name: str
    source: str
    description: str = ""
    opset: int = 18
    shape: tuple[int, int] | None = None
    precision: str = "fp32"
    verify_sizes: tuple[tuple[int, int], ...] = DEFAULT_VERIFY_SIZES
    tolerance: float = DEFAULT_TOLERANCE["fp32"]
    tensorrt: TensorRTSettings | None = None

    @property
    def dynamic(self) -> bool:
        return self.shape is None

    @property
    def check_sizes(self) -> tuple[tuple[int, int], ...]:
        """Image sizes verified: the profile's sizes, or the one tile shape of a fixed-shape export."""
        return self.verify_sizes if self.shape is None else (self.shape,)

    def with_overrides(self, dynamic: bool = False, tile: tuple[int, int] | None = None, fp16: bool = False) -> ExportProfile:
        """Apply ``--dynamic`` / ``--tile H W`` / ``--fp16`` from the command line."""
        profile = self
        if dynamic:
            profile = replace(profile, shape=None)
        if tile is not None:
            profile = replace(profile, shape=_check_side_pair(list(tile), "--tile", "--tile H W"))
        if fp16 and profile.precision != "fp16":
            tolerance = max(profile.tolerance, DEFAULT_TOLERANCE["fp16"])
            profile = replace(profile, precision="fp16", tolerance=tolerance)
        return profile

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "opset": self.opset,
            "shape": "dynamic" if self.shape is None else list(self.shape),
            "precision": self.precision,
            "verify": {"sizes": [list(s) for s in self.check_sizes], "tolerance": self.tolerance},
            "tensorrt": None if self.tensorrt is None else self.tensorrt.to_dict(),
        }


def available_profiles() -> list[str]:
    """Profile names usable with ``--profile`` (repository folder, installed data files)."""
    names: set[str] = set()
    for folder in _profile_dirs():
        names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def _profile_dirs() -> list[Path]:
    return [d for d in (REPO_PROFILE_DIR, SHARE_PROFILE_DIR) if d.is_dir()]


def load_profile(ref: str | Path) -> ExportProfile:
    """Load and validate a profile given as a YAML path or a name (see the module docstring)."""
    path = Path(ref)
    if path.is_file():
        return parse_profile(path.read_text(), str(path), path.stem)
    name = str(ref)
    if path.suffix in (".yaml", ".yml") or "/" in name:
        raise ExportError(f"{ref}: no such profile file; pass an existing YAML file or one of {available_profiles()}")
    for folder in _profile_dirs():
        file = folder / f"{name}.yaml"
        if file.is_file():
            return parse_profile(file.read_text(), str(file), name)
    raise ExportError(f"--profile {name!r}: unknown profile; use a YAML path or one of {available_profiles()}")


def parse_profile(text: str, source: str, name: str) -> ExportProfile:
    """Validate YAML ``text``; ``source`` names the file in every error message."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ExportError(f"{source}: not valid YAML{line}; fix the syntax") from None
    if not isinstance(data, Mapping):
        raise ExportError(f"{source}: an export profile must be a YAML mapping with an 'onnx' section; "
                          "see export/onnx-dynamic.yaml")
    checker = _Checker(source)
    checker.keys(data, "")
    onnx_section = checker.section(data, "onnx", required=True)
    precision = checker.choice(data.get("precision", "fp32"), "precision", PRECISIONS)
    verify = checker.section(data, "verify")
    tolerance = checker.positive_float(verify.get("tolerance", DEFAULT_TOLERANCE[precision]), "verify.tolerance")
    shape = checker.shape(onnx_section.get("shape", "dynamic"))
    sizes = DEFAULT_VERIFY_SIZES
    if "sizes" in verify:
        if shape is not None:
            raise ExportError(f"{source}: key 'verify.sizes' does not apply to a fixed onnx.shape (graphs are checked "
                              "at the tile shape); remove it or set onnx.shape: dynamic")
        sizes = checker.sizes(verify["sizes"])
    tensorrt = checker.tensorrt(checker.section(data, "tensorrt")) if "tensorrt" in data else None
    return ExportProfile(
        name=name,
        source=source,
        description=str(data.get("description", "")),
        opset=checker.opset(onnx_section.get("opset", 18)),
        shape=shape,
        precision=precision,
        verify_sizes=sizes,
        tolerance=tolerance,
        tensorrt=tensorrt,
    )


class _Checker:
    """Typed accessors that raise one-line errors naming the profile file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> ExportError:
        return ExportError(f"{self.source}: key '{key}' {problem}; {fix}")

    def keys(self, data: Mapping, section: str) -> None:
        known = _KEYS[section]
        for key in data:
            if key not in known:
                dotted = f"{section}.{key}" if section else str(key)
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(known)}"
                raise self.fail(dotted, "is not a profile setting", f"remove it ({hint})")

    def section(self, data: Mapping, key: str, required: bool = False) -> Mapping:
        if key not in data:
            if required:
                raise self.fail(key, "is missing", f"add an '{key}:' section (see export/onnx-dynamic.yaml)")
            return {}
        value = data[key]
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}", "indent its settings below it")
        self.keys(value, key)
        return value

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(key, f"is {value!r}", f"use one of {', '.join(options)}")
        return str(value)

    def opset(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in OPSETS:
            raise self.fail("onnx.opset", f"is {value!r}", f"use an integer {OPSETS.start}..{OPSETS.stop - 1} (18 is safest)")
        return value

    def positive_float(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise self.fail(key, f"is {value!r}", "use a number between 0 and 1 such as 1.0e-4")
        return float(value)

    def shape(self, value: Any) -> tuple[int, int] | None:
        if value == "dynamic":
            return None
        return _check_side_pair(value, f"{self.source}: key 'onnx.shape'", "use 'dynamic' or [H, W]")

    def pair(self, value: Any, key: str, minimum: int = 1) -> tuple[int, int]:
        if (not isinstance(value, list | tuple) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
            raise self.fail(key, f"is {value!r}", f"use [H, W] with integers >= {minimum}")
        return int(value[0]), int(value[1])

    def sizes(self, value: Any) -> tuple[tuple[int, int], ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("verify.sizes", f"is {value!r}", "use a list of [H, W] pairs like [[48, 80], [112, 48], [80, 144]]")
        sizes = tuple(self.pair(v, "verify.sizes", MIN_SIDE) for v in value)
        if len(set(sizes)) < 3:
            raise self.fail("verify.sizes", f"lists {len(set(sizes))} distinct size(s)", "list at least three sizes")
        if all(h == w for h, w in sizes):
            raise self.fail("verify.sizes", "has only square sizes", "add a non-square size such as [48, 80]")
        return sizes

    def tensorrt(self, section: Mapping) -> TensorRTSettings:
        shapes = {}
        for key in ("min", "opt", "max"):
            if key not in section:
                raise self.fail(f"tensorrt.{key}", "is missing", "give min, opt and max image sizes as [H, W]")
            shapes[key] = _check_side_pair(section[key], f"{self.source}: key 'tensorrt.{key}'", "use [H, W]")
        for axis, label in ((0, "height"), (1, "width")):
            if not shapes["min"][axis] <= shapes["opt"][axis] <= shapes["max"][axis]:
                raise self.fail("tensorrt", f"has {label}s min {shapes['min'][axis]}, opt {shapes['opt'][axis]}, "
                                f"max {shapes['max'][axis]}", "order them min <= opt <= max")
        workspace = section.get("workspace_mib", 4096)
        if isinstance(workspace, bool) or not isinstance(workspace, int) or workspace < 64:
            raise self.fail("tensorrt.workspace_mib", f"is {workspace!r}", "use an integer number of MiB >= 64")
        cache = section.get("timing_cache", True)
        if not isinstance(cache, bool | str) or cache == "":
            raise self.fail("tensorrt.timing_cache", f"is {cache!r}", "use true, false or a file path")
        return TensorRTSettings(shapes["min"], shapes["opt"], shapes["max"], workspace, cache)


def _check_side_pair(value: Any, where: str, fix: str) -> tuple[int, int]:
    """An image size [H, W]: integers >= 32 and multiples of 16, so each level's decoder maps back exactly."""
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ExportError(f"{where} is {value!r}; {fix}")
    if any(v < MIN_SIDE or v % MAX_STRIDE for v in value):
        raise ExportError(f"{where} is {list(value)}; sides must be multiples of {MAX_STRIDE} and at least {MIN_SIDE} "
                          f"(e.g. [512, 512])")
    return int(value[0]), int(value[1])
