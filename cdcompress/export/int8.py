"""INT8 bundles: post-training static quantization of a verified float32 bundle, gated by measured quality.

Integer convolutions need fixed activation ranges, so every graph is calibrated on real photos: the
encoders on the photos themselves, the decoders on what they are fed in stylization — the photos'
features as encoded and after WCT toward another photo's style. Weights are per-channel int8,
activations uint8, in QDQ form (onnxruntime fuses each QuantizeLinear/DequantizeLinear pair into an
integer kernel on CPU). An int8 graph cannot match PyTorch to 1e-4, so parity is replaced by a quality
gate on held-out photos, per level against the float32 bundle it came from: the reconstruction PSNR may
drop by at most ``max_psnr_drop`` dB, and the WCT result may differ from the float32 result by no more
than ``max_wct_rmse`` (RMS on [0, 1] pixels). A level that fails keeps its float32 graphs (the table and
the manifest's ``int8_levels`` say which); when every level fails nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.atomic import recover, staged_directory, write_json
from ..core.digest import sha256_file
from ..evaluation.metrics import mean_psnr
from .errors import ExportError
from .manifest import MANIFEST_FILE, bundle_precision, read_manifest

log = logging.getLogger(__name__)

#: Calibration photos are resized so their shorter side is this (multiple of the level-5 stride).
CALIBRATION_SIDE = 256


@dataclass(frozen=True)
class QualityGate:
    """How much worse than the float32 bundle an int8 bundle may be, per level, on held-out photos."""

    max_psnr_drop: float = 0.5  # dB of reconstruction PSNR (encoder -> decoder vs the input photo)
    max_wct_rmse: float = 0.03  # RMS difference of the single-level WCT result from the float32 one ([0, 1] pixels)


@dataclass(frozen=True)
class LevelQuality:
    level: int
    fp32_psnr: float
    int8_psnr: float
    wct_rmse: float

    @property
    def psnr_drop(self) -> float:
        return self.fp32_psnr - self.int8_psnr

    def passes(self, gate: QualityGate) -> bool:
        return self.psnr_drop <= gate.max_psnr_drop and self.wct_rmse <= gate.max_wct_rmse

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "psnr_drop": self.psnr_drop}


def require_quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise ExportError("INT8 export needs onnxruntime (with its quantization tools); "
                          "install it with `pip install 'cdcompress[export]'`") from None
    return quantization


def photos(folder: str | Path | None, scratch: Path) -> list[Path]:
    """Calibration photos: a folder of images, or scikit-image's bundled photos when none is given."""
    from ..data.batches import image_paths, skimage_photos

    return image_paths(folder) if folder is not None else skimage_photos(scratch)


def load_photo(path: Path, side: int = CALIBRATION_SIDE, square: bool = False) -> np.ndarray:
    """``[1, 3, H, W]`` float32 in [0, 1], shorter side ``side``, cropped to a multiple of 16 (or to its centred
    ``side``² square: histogram calibration needs equally shaped samples)."""
    from ..data.batches import resize_shorter
    from ..data.images import center_square, crop_to_multiple, load_image

    image = crop_to_multiple(resize_shorter(load_image(path), side), 16, path)
    return (center_square(image, side) if square else image).contiguous().numpy()


class _Samples:
    """onnxruntime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, name: str, arrays: Sequence[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{name: a} for a in arrays])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def boundary_convs(graph_path: Path, role: str) -> list[str]:
    """The convolution that touches pixels: an encoder's first (input normalisation) or a decoder's last (RGB).

    They stay float: 8-bit steps on pixel-scale values are visible (the released level-1 pair lost 17 dB
    with them quantized), while their cost is a small part of the graph."""
    import onnx

    convs = [n.name for n in onnx.load(str(graph_path), load_external_data=False).graph.node if n.op_type == "Conv"]
    return convs[:1] if role == "encoder" else convs[-1:]


def quantize_graph(source: Path, target: Path, samples: Sequence[np.ndarray], role: str) -> None:
    """Static QDQ quantization of one graph: per-channel int8 weights, uint8 activations, percentile ranges,
    the pixel-facing convolution kept in float."""
    import onnx

    q = require_quantization()
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="cdcompress-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        chatter = io.StringIO()  # the calibrator prints its progress; our output (tables, --json on stdout) stays ours
        with contextlib.redirect_stdout(chatter):
            q.quantize_static(str(prepared), str(target), _Samples(name, samples), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                              calibrate_method=q.CalibrationMethod.Percentile,
                              nodes_to_exclude=boundary_convs(prepared, role))
        if chatter.getvalue().strip():
            log.debug("onnxruntime quantizer (%s): %s", source.name, chatter.getvalue().strip())


def wct_features(features: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each photo's features whitened and coloured toward the next photo's (what stylization decodes)."""
    from ..stylization.wct import FeatureStats, wct_map

    tensors = [torch.from_numpy(f) for f in features]
    stats = [FeatureStats.of(t) for t in tensors]
    out = []
    for i, t in enumerate(tensors):
        mapped = wct_map(stats[i], stats[(i + 1) % len(stats)]).apply(t)
        out.append(mapped.contiguous().numpy().astype(np.float32))
    return out


def _run(session: Any, array: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def measure_level(fp32: tuple[Any, Any], int8: tuple[Any, Any], images: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """Mean reconstruction PSNR of both pairs and the RMS difference of their WCT results (toward the next photo)."""
    def reconstruct(pair: tuple[Any, Any], x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(_run(pair[1], _run(pair[0], x))).clamp(0, 1)

    pairs = [(torch.from_numpy(x), torch.from_numpy(x)) for x in images]
    fp32_psnr, int8_psnr = (mean_psnr(lambda x, p=pair: reconstruct(p, x.numpy()), pairs) for pair in (fp32, int8))
    errors = []
    for pair_index, x in enumerate(images):
        style = images[(pair_index + 1) % len(images)]
        results = []
        for encoder, decoder in (fp32, int8):
            mapped = wct_features([_run(encoder, x), _run(encoder, style)])[0]
            results.append(torch.from_numpy(_run(decoder, mapped)).clamp(0, 1).double())
        errors.append(float((results[0] - results[1]).pow(2).mean().sqrt()))
    return fp32_psnr, int8_psnr, math.fsum(errors) / len(errors)


def format_quality_table(rows: Sequence[LevelQuality], gate: QualityGate) -> str:
    lines = ["| level | fp32 PSNR (dB) | int8 PSNR (dB) | drop (dB) | WCT RMS vs fp32 | passes |",
             "|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r.level} | {r.fp32_psnr:.2f} | {r.int8_psnr:.2f} | {r.psnr_drop:.2f} | {r.wct_rmse:.4f} | "
                     f"{'yes' if r.passes(gate) else 'NO'} |")
    lines.append(f"\ngate: PSNR drop <= {gate.max_psnr_drop:g} dB, WCT RMS <= {gate.max_wct_rmse:g}")
    return "\n".join(lines)


@dataclass
class Int8Result:
    path: Path
    rows: list[LevelQuality]
    manifest: dict[str, Any]


def quantize_bundle(bundle: str | Path, out: str | Path, calibration: str | Path | None = None,
                    held_out: str | Path | None = None, gate: QualityGate | None = None, overwrite: bool = False,
                    echo: Callable[[str], None] | None = None, calibration_limit: int = 16) -> Int8Result:
    """Write an int8 copy of the float32 VGG-family ``bundle`` to ``out``, or raise when it fails the gate.

    ``calibration``: a folder of photos (default scikit-image's bundled photos but their last two);
    ``held_out``: photos the gate judges on (default those last two), never used for calibration. The quality table
    goes to ``echo`` (the CLI's ``click.echo``), else to this module's logger: library code does not print."""
    from .runtime import make_session

    echo = echo or log.info
    gate = gate or QualityGate()
    source, out = Path(bundle), Path(out)
    manifest = read_manifest(source)
    if manifest.get("precision") != "fp32" or manifest.get("family") == "module":
        raise ExportError(f"{source}: INT8 quantizes float32 VGG-family bundles; export one with `cdcompress export` first")
    if manifest["shape"] != "dynamic":
        raise ExportError(f"{source}: INT8 needs a dynamic-shape bundle (calibration photos have their own sizes)")
    recover(out)  # a crashed write's old bundle counts as existing
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix="cdcompress-int8-photos-") as scratch:
        train = photos(calibration, Path(scratch))
        test = photos(held_out, Path(scratch)) if held_out is not None else []
        if not test:
            if calibration is not None:
                raise ExportError("INT8 with --calibration needs --held-out photos for the quality gate")
            train, test = train[:-2], train[-2:]
        train_images = [load_photo(p, square=True) for p in train[:calibration_limit]]
        test_images = [load_photo(p) for p in test]
    rows: list[LevelQuality] = []
    with staged_directory(out) as staging:
        for name in [*manifest["files"]]:
            if name != MANIFEST_FILE:
                shutil.copy2(source / name, staging / name)
        for level in manifest["levels"]:
            enc, dec = f"enc{level}.onnx", f"dec{level}.onnx"
            fp32 = (make_session(source / enc), make_session(source / dec))
            features = [_run(fp32[0], x) for x in train_images]
            quantize_graph(source / enc, staging / enc, train_images, "encoder")
            quantize_graph(source / dec, staging / dec, features + wct_features(features), "decoder")
            int8 = (make_session(staging / enc), make_session(staging / dec))
            row = LevelQuality(level, *measure_level(fp32, int8, test_images))
            rows.append(row)
            if not row.passes(gate):  # this level ships its float32 graphs, said in the table and the manifest
                for name in (enc, dec):
                    shutil.copy2(source / name, staging / name)
        echo(format_quality_table(rows, gate))
        if not any(r.passes(gate) for r in rows):
            detail = "; ".join(f"level {r.level}: PSNR drop {r.psnr_drop:.2f} dB, WCT RMS {r.wct_rmse:.4f}" for r in rows)
            raise ExportError(f"INT8 quality gate failed at every level ({detail}); the bundle was not written. "
                              "Calibrate on photos like the ones you will stylize (--calibration) or deploy the "
                              "float32 bundle")
        level_precision = {str(r.level): "int8" if r.passes(gate) else "fp32" for r in rows}
        manifest = {**manifest, "precision": bundle_precision(level_precision), "level_precision": level_precision,
                    "int8_levels": [r.level for r in rows if r.passes(gate)],
                    "int8": {"calibration": str(calibration or "scikit-image photos"), "images": len(train_images),
                             "held_out": [str(p) for p in test], "gate": asdict(gate),
                             "quality": [r.as_dict() for r in rows], "source_bundle": str(source)},
                    "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                              for f in sorted(staging.iterdir()) if f.name != MANIFEST_FILE}}
        write_json(staging / MANIFEST_FILE, manifest)
    return Int8Result(out, rows, manifest)
