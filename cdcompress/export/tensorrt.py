"""TensorRT engines from a bundle's verified ONNX graphs (TensorRT 10 and 11 Python API).

``tensorrt`` is imported only when engines are requested, and its absence, or the absence of an
NVIDIA GPU, is one :class:`TensorRTUnavailable` line (exit code 2) raised before any export work.

Precision: TensorRT 11 removed the weak-typing builder flags, so FP16 lives in the graph itself:
``--fp16`` exports half-precision ONNX (float32 inputs/outputs, casts at the edges) and the network
is created strongly typed. TensorRT 10 builds the same graph with ``BuilderFlag.FP16``. The mode is
chosen by what the installed module offers, not by parsing its version.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.progress import progress_iter
from .errors import ExportError, TensorRTUnavailable
from .onnx import Part
from .profiles import ExportProfile, TensorRTSettings

INSTALL_HINT = "install it with `pip install tensorrt` (or `pip install 'cdcompress[trt]'`) on a machine with an NVIDIA GPU"
TIMING_CACHE_FILE = "trt-timing.cache"
_CUDA_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def cuda_devices() -> tuple[int, str]:
    """Number of CUDA GPUs the driver reports, and why there are none (empty when there are some).

    Asks the driver (libcuda) directly: a CPU-only torch build says nothing about the machine.
    """
    for name in _CUDA_LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return 0, "the NVIDIA driver found no usable GPU (cuInit failed)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return 0, "the NVIDIA driver reports no GPU"
        return count.value, ""
    return 0, "no NVIDIA driver was found (libcuda)"


def require_tensorrt() -> Any:
    """Import ``tensorrt`` and check for a GPU; one line saying what is missing otherwise."""
    problems = []
    try:
        import tensorrt as trt
    except ImportError:
        trt = None
        problems.append(f"the tensorrt Python package is not installed ({INSTALL_HINT})")
    count, why = cuda_devices()
    if count == 0:
        problems.append(f"no CUDA GPU is available: {why}")
    if problems:
        raise TensorRTUnavailable(f"--trt needs TensorRT and an NVIDIA GPU, but {' and '.join(problems)}; "
                                  "drop --trt to export verified ONNX only")
    return trt


def fp16_mode(trt: Any) -> str:
    """``builder-flag`` (TensorRT <= 10: weak typing allowed) or ``strongly-typed`` (TensorRT 11)."""
    return "builder-flag" if hasattr(trt.BuilderFlag, "FP16") else "strongly-typed"


@dataclass(frozen=True)
class ShapeRange:
    """Optimisation-profile shapes of one graph input."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def trt_settings(profile: ExportProfile) -> TensorRTSettings:
    """The profile's TensorRT section; a fixed tile needs none (min = opt = max = the tile)."""
    if profile.shape is not None:
        base = profile.tensorrt or TensorRTSettings(profile.shape, profile.shape, profile.shape)
        return TensorRTSettings(profile.shape, profile.shape, profile.shape, base.workspace_mib, base.timing_cache)
    if profile.tensorrt is None:
        raise ExportError(f"{profile.source}: --trt needs a 'tensorrt:' section (min/opt/max image sizes) for dynamic "
                          "shapes; use --profile trt-fp16, add the section, or pass --tile H W")
    return profile.tensorrt


def engine_shapes(part: Part, settings: TensorRTSettings) -> ShapeRange:
    """Per-graph shapes from image sizes: encoders see the image, decoders its 1/stride feature grid."""
    shapes = [part.input_shape(hw) for hw in (settings.min, settings.opt, settings.max)]
    smallest = 2 ** part.level if part.role == "encoder" else 2
    if min(shapes[0][2:]) < smallest:
        raise ExportError(f"tensorrt.min {list(settings.min)} is too small for {part.name} (needs input sides >= {smallest}); "
                          "raise tensorrt.min")
    return ShapeRange(part.io_names[0], *shapes)


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "EXPLICIT_BATCH") and int(getattr(trt, "__version__", "10").split(".")[0]) < 10:
        flags |= 1 << int(creation.EXPLICIT_BATCH)  # TensorRT 8/9 only; implicit batch is gone since 10
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)  # required on 10.x for strong typing, accepted (ignored) on 11
    return flags


def build_engine(trt: Any, builder: Any, logger: Any, onnx_path: Path, engine_path: Path, shapes: ShapeRange,
                 precision: str, workspace_mib: int, timing_cache: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    """Parse ``onnx_path``, build and write one serialized engine; returns its manifest entry and the cache."""
    mode = fp16_mode(trt) if precision == "fp16" else "fp32"
    network = builder.create_network(_network_flags(trt, strongly_typed=mode == "strongly-typed"))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "unknown parser error"
        raise ExportError(f"{onnx_path.name}: TensorRT could not parse the ONNX graph ({errors}); please report it")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if mode == "builder-flag":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(shapes.input, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path.name}: TensorRT engine build failed (see the TensorRT log above); "
                          "try a larger tensorrt.workspace_mib or smaller tensorrt.max")
    engine_path.write_bytes(bytes(serialized))
    new_cache = bytes(config.get_timing_cache().serialize()) if timing_cache is not None else None
    entry = {"file": engine_path.name, "onnx": onnx_path.name, "shapes": shapes.to_dict(), "precision": precision,
             "fp16_mode": mode if precision == "fp16" else None, "workspace_mib": workspace_mib}
    return entry, new_cache


def build_engines(trt: Any, bundle_dir: Path, parts: list[Part], profile: ExportProfile,
                  progress: bool = True) -> dict[str, Any]:
    """Engines for every graph in ``bundle_dir``; the timing cache is shared so repeated tactics are timed once."""
    settings = trt_settings(profile)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if builder is None:
        raise TensorRTUnavailable("--trt: TensorRT could not create a builder on this GPU (see its log above); "
                                  "check the NVIDIA driver and CUDA installation")
    cache_path = _timing_cache_path(bundle_dir, settings)
    cache = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else (b"" if cache_path else None)
    engines: dict[str, Any] = {}
    for part in progress_iter(parts, "tensorrt", "engine", enabled=progress):
        engines[part.name], cache = build_engine(
            trt, builder, logger, bundle_dir / part.file, bundle_dir / f"{part.name}.engine", engine_shapes(part, settings),
            profile.precision, settings.workspace_mib, cache)
    if cache_path is not None and cache is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(cache)
    where = None if cache_path is None else cache_path.name if cache_path.parent == bundle_dir else str(cache_path)
    return {"tensorrt_version": str(getattr(trt, "__version__", "unknown")), "engines": engines, "timing_cache": where}


def _timing_cache_path(bundle_dir: Path, settings: TensorRTSettings) -> Path | None:
    if settings.timing_cache is False:
        return None
    if settings.timing_cache is True:
        return bundle_dir / TIMING_CACHE_FILE
    return Path(str(settings.timing_cache)).expanduser()
