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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    """How much worse than float32 an int8 bundle may be on held-out photos: per level, and over the whole cascade."""

    max_psnr_drop: float = 0.5  # dB of reconstruction PSNR (encoder -> decoder vs the input photo)
    max_wct_rmse: float = 0.03  # RMS difference of the single-level WCT result from the float32 one ([0, 1] pixels)
    max_cascade_rmse: float = 0.03  # RMS difference of the multi-level WCT (every level of the bundle, coarse to fine)


@dataclass(frozen=True)
class LevelQuality:
    level: int
    fp32_psnr: float
    int8_psnr: float
    wct_rmse: float
    ranges: str = "calibrated"  # "trained": the activation ranges a quantization-aware training ran with

    @property
    def psnr_drop(self) -> float:
        return self.fp32_psnr - self.int8_psnr

    def passes(self, gate: QualityGate) -> bool:
        return self.psnr_drop <= gate.max_psnr_drop and self.wct_rmse <= gate.max_wct_rmse

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "psnr_drop": self.psnr_drop}


@dataclass(frozen=True)
class CascadeQuality:
    """The multi-level WCT of the bundle as written against the float32 reference's, on held-out photo pairs."""

    levels: list[int]
    int8_levels: list[int]
    rmse: float
    psnr: float
    kept_float: list[int]  # int8-capable levels set back to float32 so that the cascade passes
    first_rmse: float = 0.0  # the cascade with every level that passed its own gate in int8

    def passes(self, gate: QualityGate) -> bool:
        return self.rmse <= gate.max_cascade_rmse

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def quantize_graph(source: Path, target: Path, samples: Sequence[np.ndarray], role: str,
                   ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
    """Static QDQ quantization of one graph: per-channel int8 weights, uint8 activations, the pixel-facing
    convolution kept in float. Activation ranges are ``ranges`` when given (those a quantization-aware training
    ran with, :mod:`cdcompress.surgery.fake_quant`: the graph then rounds exactly as training did), else
    onnxruntime's percentile calibration on ``samples``."""
    import onnx

    q = require_quantization()
    name = onnx.load(str(source), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="cdcompress-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        q.quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        options: dict[str, Any] = {}
        if ranges is not None:
            options["TensorQuantOverrides"] = range_overrides(prepared, role, ranges)
            samples = samples[:1]  # every activation range is given: calibration only has to run
        chatter = io.StringIO()  # the calibrator prints its progress; our output (tables, --json on stdout) stays ours
        with contextlib.redirect_stdout(chatter):
            q.quantize_static(str(prepared), str(target), _Samples(name, samples), quant_format=q.QuantFormat.QDQ,
                              per_channel=True, weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                              calibrate_method=q.CalibrationMethod.MinMax if ranges is not None
                              else q.CalibrationMethod.Percentile,
                              nodes_to_exclude=boundary_convs(prepared, role), extra_options=options)
        if chatter.getvalue().strip():
            log.debug("onnxruntime quantizer (%s): %s", source.name, chatter.getvalue().strip())
    if ranges is not None:
        check_activation_scales(target, ranges)


def range_overrides(graph_path: Path, role: str, ranges: Mapping[str, tuple[float, float]]) -> dict[str, list[dict]]:
    """onnxruntime's ``TensorQuantOverrides`` pinning each quantization point's scale and zero point.

    Points are named as :func:`~cdcompress.surgery.fake_quant.quant_points` names them, in forward order; in the
    graph they are the encoder's first Conv output (``conv0``) or the decoder's input (``input``), then the Relu
    outputs in order (a decoder's RGB Relu, if any, is last and not a point)."""
    import onnx

    from ..surgery.fake_quant import INPUT, activation_qparams

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    relus = [n.output[0] for n in graph.node if n.op_type == "Relu"]
    first = graph.input[0].name if role == "decoder" else next(n.output[0] for n in graph.node if n.op_type == "Conv")
    points = list(ranges)
    head = INPUT if role == "decoder" else "conv0"
    fits = points[:1] == [head] and (len(relus) == len(points) - 1 or (role == "decoder" and len(relus) == len(points)))
    if not fits:
        raise ExportError(f"{graph_path.name}: the trained activation ranges ({len(points)} points: {', '.join(points)}) "
                          f"do not fit this {role} graph ({len(relus)} Relu); export the model they were trained with")
    overrides = {}
    for point, tensor in zip(points, [first, *relus], strict=False):
        scale, zero_point = activation_qparams(*ranges[point])
        overrides[tensor] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zero_point, dtype=np.uint8)}]
    return overrides


def check_activation_scales(graph_path: Path, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Every activation the int8 graph quantizes must use one of the trained scales (pads, pools and upsampling
    share their input's): anything else means the graph rounds differently from training."""
    import onnx
    from onnx import numpy_helper

    from ..surgery.fake_quant import activation_qparams

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {t.name for t in graph.initializer}
    trained = {np.float32(activation_qparams(*r)[0]) for r in ranges.values()}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in weights:
            scale = np.float32(constants[node.input[1]])
            if scale not in trained:
                raise ExportError(f"{graph_path.name}: activation {node.input[0]} was quantized with scale {scale:g}, "
                                  "not with a trained range; the INT8 graph would not be the one trained")


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


class GraphPairs:
    """An untiled stylization backend over a bundle folder's graphs by file name (the bundle being written has no
    manifest yet): what the cascade gate stylizes with."""

    def __init__(self, folder: Path, levels: Sequence[int]) -> None:
        from .runtime import make_session

        self.folder, self._levels = folder, list(levels)
        self._sessions = {f"{role}{k}": make_session(folder / f"{role}{k}.onnx") for k in levels for role in ("enc", "dec")}

    @property
    def levels(self) -> list[int]:
        return list(self._levels)

    def reload(self, level: int) -> None:
        """Re-read a level's graphs after their files were replaced."""
        from .runtime import make_session

        for role in ("enc", "dec"):
            self._sessions[f"{role}{level}"] = make_session(self.folder / f"{role}{level}.onnx")

    def encode(self, level: int, image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_run(self._sessions[f"enc{level}"], image.contiguous().numpy()))

    def decode(self, level: int, features: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_run(self._sessions[f"dec{level}"], features.float().contiguous().numpy()))


def cascade_difference(ours: Any, reference: Any, images: Sequence[np.ndarray], levels: Sequence[int]) -> tuple[float, float]:
    """RMS and PSNR (dB) of ``ours``' multi-level WCT against ``reference``'s, each held-out photo stylized toward
    the next one, coarse to fine through ``levels``."""
    from ..stylization import stylize

    order = sorted(levels, reverse=True)
    errors = []
    for i, x in enumerate(images):
        content, style = torch.from_numpy(x), torch.from_numpy(images[(i + 1) % len(images)])
        results = [stylize(b, content, style, levels=order, tile=0).double() for b in (ours, reference)]
        errors.append(float((results[0] - results[1]).pow(2).mean()))
    mse = math.fsum(errors) / len(errors)
    return math.sqrt(mse), (10 * math.log10(1 / mse) if mse > 0 else math.inf)


def format_quality_table(rows: Sequence[LevelQuality], gate: QualityGate) -> str:
    lines = ["| level | ranges | fp32 PSNR (dB) | int8 PSNR (dB) | drop (dB) | WCT RMS vs fp32 | passes |",
             "|---:|---|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r.level} | {r.ranges} | {r.fp32_psnr:.2f} | {r.int8_psnr:.2f} | {r.psnr_drop:.2f} | "
                     f"{r.wct_rmse:.4f} | {'yes' if r.passes(gate) else 'NO'} |")
    lines.append(f"\ngate: PSNR drop <= {gate.max_psnr_drop:g} dB, WCT RMS <= {gate.max_wct_rmse:g} per level; "
                 f"cascade RMS <= {gate.max_cascade_rmse:g}")
    return "\n".join(lines)


def format_cascade(cascade: CascadeQuality, gate: QualityGate) -> str:
    order = ",".join(map(str, sorted(cascade.levels, reverse=True)))
    line = (f"cascade (WCT levels {order}, int8 levels {','.join(map(str, cascade.int8_levels)) or 'none'}): "
            f"RMS {cascade.rmse:.4f} vs float32, PSNR {cascade.psnr:.2f} dB: "
            f"{'passes' if cascade.passes(gate) else 'FAILS'}")
    if cascade.kept_float:
        line += (f"; level(s) {','.join(map(str, cascade.kept_float))} kept in float32 because the cascade needs it "
                 f"(each passed its own gate; with them in int8 the cascade was RMS {cascade.first_rmse:.4f})")
    return line


@dataclass
class Int8Result:
    path: Path
    rows: list[LevelQuality]
    manifest: dict[str, Any]
    cascade: CascadeQuality | None = None


LevelRanges = Mapping[int, Mapping[str, Mapping[str, tuple[float, float]]]]


def quantize_bundle(bundle: str | Path, out: str | Path, calibration: str | Path | None = None,
                    held_out: str | Path | None = None, gate: QualityGate | None = None, overwrite: bool = False,
                    echo: Callable[[str], None] | None = None, calibration_limit: int = 16,
                    ranges: LevelRanges | None = None, reference: str | Path | None = None,
                    cascade: bool = True) -> Int8Result:
    """Write an int8 copy of the float32 VGG-family ``bundle`` to ``out``, or raise when it fails the gate.

    ``calibration``: a folder of photos (default scikit-image's bundled photos but their last two);
    ``held_out``: photos the gate judges on (default those last two), never used for calibration. ``ranges``
    (``{level: {"encoder": {point: (rmin, rmax)}, "decoder": ...}}``, from ``cdcompress quantize``) are the activation
    ranges a quantization-aware training ran with; those levels use them instead of calibrating. ``reference`` is
    the float32 bundle the gate compares with (default ``bundle``; a quantization-aware model is judged against the
    float model it was fine-tuned from). Per level, the int8 graphs must pass the gate or the level ships float32;
    then the whole multi-level WCT must stay within ``max_cascade_rmse`` of the reference's, and while it does not,
    the int8 level whose float32 graphs help the cascade most is set back to float32 (``cascade=False`` skips this
    whole-cascade step: per-level verdicts only). The quality table goes to
    ``echo`` (the CLI's ``click.echo``), else to this module's logger: library code does not print."""
    echo = echo or log.info
    gate = gate or QualityGate()
    source, out = Path(bundle), Path(out)
    manifest = _checked_source(source)
    reference_path = Path(reference) if reference is not None else source
    if reference is not None:
        missing = sorted(set(manifest["levels"]) - set(_checked_source(reference_path)["levels"]))
        if missing:
            raise ExportError(f"{reference_path}: the reference bundle lacks level(s) {missing}; export it with them")
    recover(out)  # a crashed write's old bundle counts as existing
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it")
    train, test, train_images, test_images = _gate_photos(calibration, held_out, calibration_limit)
    ranges = ranges or {}
    rows: list[LevelQuality] = []
    with staged_directory(out) as staging:
        for name in [*manifest["files"]]:
            if name != MANIFEST_FILE:
                shutil.copy2(source / name, staging / name)
        for level in manifest["levels"]:
            rows.append(_quantize_level(source, reference_path, staging, level, ranges.get(level), train_images,
                                        test_images, gate))
        echo(format_quality_table(rows, gate))
        if not any(r.passes(gate) for r in rows):
            detail = "; ".join(f"level {r.level}: PSNR drop {r.psnr_drop:.2f} dB, WCT RMS {r.wct_rmse:.4f}" for r in rows)
            raise ExportError(f"INT8 quality gate failed at every level ({detail}); the bundle was not written. "
                              "Calibrate on photos like the ones you will stylize (--calibration), fine-tune with "
                              "`cdcompress quantize`, or deploy the float32 bundle")
        passing = [r.level for r in rows if r.passes(gate)]
        whole = None
        if cascade:
            whole = _cascade_gate(source, reference_path, staging, manifest["levels"], passing, test_images, gate)
            echo(format_cascade(whole, gate))
            if not whole.passes(gate) or not whole.int8_levels:
                raise ExportError(_cascade_failure(whole, gate))
            passing = list(whole.int8_levels)
        level_precision = {str(k): "int8" if k in passing else "fp32" for k in manifest["levels"]}
        manifest = {**manifest, "precision": bundle_precision(level_precision), "level_precision": level_precision,
                    "int8_levels": passing,
                    "int8": {"calibration": str(calibration or "scikit-image photos"), "images": len(train_images),
                             "trained_ranges": sorted(int(k) for k in ranges), "held_out": [str(p) for p in test],
                             "gate": asdict(gate), "quality": [r.as_dict() for r in rows],
                             "cascade": whole.as_dict() if whole else None, "source_bundle": str(source),
                             "reference_bundle": str(reference_path)},
                    "files": {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                              for f in sorted(staging.iterdir()) if f.name != MANIFEST_FILE}}
        write_json(staging / MANIFEST_FILE, manifest)
    return Int8Result(out, rows, manifest, whole)


def _cascade_failure(cascade: CascadeQuality, gate: QualityGate) -> str:
    head = f"INT8 cascade gate failed (the {len(cascade.levels)}-level WCT against float32, limit RMS {gate.max_cascade_rmse:g})"
    if not cascade.passes(gate):
        return (f"{head}: RMS {cascade.rmse:.4f} even with every level in float32, so the model's float weights differ "
                "from the reference's; the bundle was not written")
    return (f"{head}: only with every level back in float32 (set back: {','.join(map(str, cascade.kept_float))}); the "
            "bundle was not written. Calibrate on photos like the ones you will stylize (--calibration), fine-tune with "
            "`cdcompress quantize`, or deploy the float32 bundle")


def _checked_source(source: Path) -> dict[str, Any]:
    manifest = read_manifest(source)
    if manifest.get("precision") != "fp32" or manifest.get("family") == "module":
        raise ExportError(f"{source}: INT8 quantizes float32 VGG-family bundles; export one with `cdcompress export` first")
    if manifest["shape"] != "dynamic":
        raise ExportError(f"{source}: INT8 needs a dynamic-shape bundle (calibration photos have their own sizes)")
    return manifest


def _gate_photos(calibration: str | Path | None, held_out: str | Path | None,
                 limit: int) -> tuple[list[Path], list[Path], list[np.ndarray], list[np.ndarray]]:
    with tempfile.TemporaryDirectory(prefix="cdcompress-int8-photos-") as scratch:
        train = photos(calibration, Path(scratch))
        test = photos(held_out, Path(scratch)) if held_out is not None else []
        if not test:
            if calibration is not None:
                raise ExportError("INT8 with --calibration needs --held-out photos for the quality gate")
            train, test = train[:-2], train[-2:]
        return train, test, [load_photo(p, square=True) for p in train[:limit]], [load_photo(p) for p in test]


def _quantize_level(source: Path, reference: Path, staging: Path, level: int,
                    trained: Mapping[str, Mapping[str, tuple[float, float]]] | None, train_images: list[np.ndarray],
                    test_images: list[np.ndarray], gate: QualityGate) -> LevelQuality:
    """Quantize one level's graphs into ``staging`` and measure them; a level past its gate gets float32 back."""
    from .runtime import make_session

    enc, dec = f"enc{level}.onnx", f"dec{level}.onnx"
    fp32 = (make_session(source / enc), make_session(source / dec))
    features = [_run(fp32[0], x) for x in train_images]
    quantize_graph(source / enc, staging / enc, train_images, "encoder", trained["encoder"] if trained else None)
    quantize_graph(source / dec, staging / dec, features + wct_features(features), "decoder",
                   trained["decoder"] if trained else None)
    int8 = (make_session(staging / enc), make_session(staging / dec))
    judge = fp32 if reference == source else (make_session(reference / enc), make_session(reference / dec))
    row = LevelQuality(level, *measure_level(judge, int8, test_images), ranges="trained" if trained else "calibrated")
    if not row.passes(gate):
        for name in (enc, dec):
            shutil.copy2(source / name, staging / name)
    return row


def _cascade_gate(source: Path, reference: Path, staging: Path, levels: Sequence[int], int8_levels: Sequence[int],
                  images: Sequence[np.ndarray], gate: QualityGate) -> CascadeQuality:
    """Measure the whole cascade; while it fails, set back to float32 the int8 level whose float graphs bring it
    closest to the reference (greedy: one stylization per candidate)."""
    ours, judge = GraphPairs(staging, levels), GraphPairs(reference, levels)
    current = list(int8_levels)
    rmse, quality = cascade_difference(ours, judge, images, levels)
    first, kept = rmse, []
    while rmse > gate.max_cascade_rmse and current:
        trials = {}
        for level in current:
            trial_dir = Path(tempfile.mkdtemp(prefix="cdcompress-cascade-"))
            try:
                for k in levels:
                    for role in ("enc", "dec"):
                        origin = source if k == level else staging
                        shutil.copy2(origin / f"{role}{k}.onnx", trial_dir / f"{role}{k}.onnx")
                trials[level] = cascade_difference(GraphPairs(trial_dir, levels), judge, images, levels)
            finally:
                shutil.rmtree(trial_dir, ignore_errors=True)
        best = min(trials, key=lambda k: trials[k][0])
        for role in ("enc", "dec"):
            shutil.copy2(source / f"{role}{best}.onnx", staging / f"{role}{best}.onnx")
        ours.reload(best)
        current.remove(best)
        kept.append(best)
        rmse, quality = trials[best]
    return CascadeQuality(list(levels), current, rmse, quality, kept, first)
