"""ONNX graphs of any encoder-decoder pair (``module``-family models), and running them.

A user's encoder may return several feature maps (a U-Net's skips) as a tensor, tuple or dict; the
graphs take and give flat tensors named ``features`` or ``features_<i|key>``, and the manifest keeps the
structure. Height and width stay symbolic: each feature map's size is the image size divided by its
measured stride, so the decoder graph accepts exactly the feature shapes its encoder graph produces
(e.g. a U-Net's concatenations stay valid at every size that is a multiple of the deepest stride).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..surgery.embed import flatten_outputs
from .errors import ExportError
from .onnx import ParityRow, graph_module, io_entry, verification_image

IMAGE = "image"


class FlatEncoder(nn.Module):
    """``image -> (features...)`` with the encoder's outputs flattened in a fixed order."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.encoder(image)).values())


class FlatDecoder(nn.Module):
    """``(features...) -> image``: rebuilds the encoder's output structure before decoding."""

    def __init__(self, decoder: nn.Module, structure: Any) -> None:
        super().__init__()
        self.decoder = decoder
        self.structure = structure

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.decoder(restructure(self.structure, features))


def output_structure(outputs: Any) -> Any:
    """JSON description of an encoder's outputs: ``"tensor"``, ``{"tuple": n}`` or ``{"dict": [keys]}``."""
    if isinstance(outputs, torch.Tensor):
        return "tensor"
    if isinstance(outputs, (tuple, list)):
        return {"tuple": len(outputs)}
    return {"dict": [str(k) for k in outputs]}


def restructure(structure: Any, flat: Sequence[torch.Tensor]) -> Any:
    """Inverse of flattening: the tensors in the structure :func:`output_structure` recorded."""
    if structure == "tensor":
        return flat[0]
    if "tuple" in structure:
        return tuple(flat)
    return dict(zip(structure["dict"], flat, strict=True))


def feature_names(encoder_outputs: Any) -> list[str]:
    return [name.replace("output", "features", 1) for name in flatten_outputs(encoder_outputs)]


def strides(encoder: nn.Module, channels: int = 3, probe: tuple[int, int] = (96, 128)) -> list[int]:
    """Each output's downsampling factor, measured; the image side must be a multiple of the largest."""
    with torch.no_grad():
        outputs = flatten_outputs(encoder(torch.zeros(1, channels, *probe)))
    found = []
    for name, feature in outputs.items():
        if feature.dim() != 4:
            raise ExportError(f"encoder output {name} has shape {list(feature.shape)}; dynamic ONNX export needs "
                              "[N, C, H, W] feature maps (export with --tile H W for other layouts)")
        h, w = feature.shape[-2:]
        if probe[0] % h or probe[1] % w or probe[0] // h != probe[1] // w:
            raise ExportError(f"encoder output {name}: {probe[0]}x{probe[1]} -> {h}x{w} is not an integer downsampling; "
                              "export with --tile H W")
        found.append(probe[0] // h)
    return found


def export_pair_graph(module: nn.Module | tuple[nn.Module, nn.Module], role: str, path: Path, opset: int,
                      tile: tuple[int, int] | None, channels: int = 3) -> dict[str, Any]:
    """Write the encoder (``module``) or decoder (``(encoder, decoder)``) of a pair as one float32 ONNX graph;
    returns the graph's names and shapes, each feature's stride and the encoder's output structure."""
    import onnx

    encoder, decoder = (module, None) if role == "encoder" else module
    scales = strides(encoder, channels)
    deepest = max(scales)
    example_hw = tile or (deepest * 6, deepest * 10)
    with torch.no_grad():
        raw = encoder(torch.rand(1, channels, *example_hw))
    names = feature_names(raw)
    flat = list(flatten_outputs(raw).values())
    if role == "encoder":
        graph, args = FlatEncoder(encoder), (torch.rand(1, channels, *example_hw),)
        inputs, outputs = [IMAGE], names
        dims = None if tile else ({2: torch.export.Dim("h", min=1) * deepest, 3: torch.export.Dim("w", min=1) * deepest},)
    else:
        graph, args = FlatDecoder(decoder, output_structure(raw)), tuple(torch.rand_like(f) for f in flat)
        inputs, outputs = names, [IMAGE]
        h, w = torch.export.Dim("h", min=1), torch.export.Dim("w", min=1)
        # forward(*features): torch.export sees one (varargs) input holding every feature map
        dims = None if tile else (tuple({2: h * (deepest // s), 3: w * (deepest // s)} for s in scales),)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(graph_module(graph, "fp32"), args, str(path),
                          dynamo=True, external_data=False, optimize=True, verbose=False, opset_version=opset,
                          input_names=inputs, output_names=outputs, dynamic_shapes=dims)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return {"inputs": [io_entry(v) for v in model.graph.input], "outputs": [io_entry(v) for v in model.graph.output],
            "strides": dict(zip(names, scales, strict=True)), "structure": output_structure(raw)}


def check_sizes(sizes: Sequence[tuple[int, int]], multiple: int) -> list[tuple[int, int]]:
    """The profile's verification sizes rounded up to multiples of the deepest stride."""
    return [(-(-h // multiple) * multiple, -(-w // multiple) * multiple) for h, w in sizes]


Case = tuple[tuple[int, int], tuple[torch.Tensor, ...]]


def verify_pair_graph(session: Any, module: nn.Module, name: str, cases: Sequence[Case], tolerance: float) -> list[ParityRow]:
    """ONNX Runtime against PyTorch for every case; one row per case (worst output)."""
    rows = []
    input_names = [i.name for i in session.get_inputs()]
    for image_hw, args in cases:
        with torch.inference_mode():
            want = module(*args)
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        got = session.run(None, {n: a.numpy() for n, a in zip(input_names, args, strict=True)})
        worst, peak = 0.0, 0.0
        for g, w in zip(got, want, strict=True):
            w = w.float().cpu().numpy()
            if g.shape != w.shape:
                raise ExportError(f"{name}: ONNX output shape {list(g.shape)} differs from PyTorch {list(w.shape)}; "
                                  "the export is broken, please report it")
            diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64))))
            if diff / max(1.0, float(np.max(np.abs(w)))) >= worst / max(1.0, peak):
                worst, peak = diff, float(np.max(np.abs(w)))
        rows.append(ParityRow(name, image_hw, tuple(args[0].shape), worst, peak, tolerance))
    return rows


def pair_cases(encoder: nn.Module, sizes: Sequence[tuple[int, int]], channels: int = 3) -> dict[str, list]:
    """Verification inputs: noise images for the encoder, the PyTorch encoder's features of them for the decoder."""
    images = [(hw, verification_image(hw, seed)[:, :channels]) for seed, hw in enumerate(sizes)]
    flat = FlatEncoder(copy.deepcopy(encoder).float().cpu().eval())
    with torch.inference_mode():
        features = [(hw, tuple(f.clone() for f in flat(image))) for hw, image in images]
    return {"encoder": [(hw, (image,)) for hw, image in images], "decoder": features}


class PairRunner:
    """An exported pair on ONNX Runtime: ``runner(image) -> image`` (encoder graph, then decoder graph)."""

    def __init__(self, bundle: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 verify: bool = True) -> None:
        from .manifest import read_manifest
        from .runtime import choose_providers, make_session

        self.path = Path(bundle)
        self.manifest = read_manifest(self.path, verify=verify)
        if self.manifest.get("family") != "module":
            raise ExportError(f"{self.path}: a stylization bundle (levels {self.manifest['levels']}); run it with "
                              "OnnxBackend / `cdcompress stylize --bundle`")
        chosen = choose_providers(self.manifest["shape"] != "dynamic", providers)
        self.encoder = make_session(self.path / self.manifest["parts"]["enc1"]["file"], chosen, threads)
        self.decoder = make_session(self.path / self.manifest["parts"]["dec1"]["file"], chosen, threads)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        features = self.encoder.run(None, {self.encoder.get_inputs()[0].name: image.detach().float().cpu().numpy()})
        names = [i.name for i in self.decoder.get_inputs()]
        return torch.from_numpy(self.decoder.run(None, dict(zip(names, features, strict=True)))[0])
