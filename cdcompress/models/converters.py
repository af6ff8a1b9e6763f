"""Converters from external weight layouts into :class:`~cdcompress.models.format.CDModel`.

Three sources are supported:

* ``cd-release``: the paper's released per-level checkpoints (``se{k}.pth`` / ``sd{k}.pth`` for the
  16x students, ``e{k}_base.pth`` / ``d{k}_base.pth`` for their pruned initialisations). Keys already
  match our module names; ``conv*_aux`` layers become embedding branches. The same decoder path
  reads the paper's full-width teacher decoders (identical key names, VGG-19 widths).
* ``torchvision``: a VGG-19 state dict (``features.N.*``); ImageNet mean/std normalisation is folded
  into the 1x1 ``conv0`` so it runs in the same encoder as the released models.

* ``wct-pytorch``: the original WCT teacher (Li et al. 2017) in its common PyTorch conversion:
  ``vgg_normalised_conv{k}_1.pth`` / ``feature_invertor_conv{k}_1.pth``, state dicts of ``nn.Sequential``
  whose keys are layer indices. Convolutions are matched in order; max-pooling uses ceil mode and the
  decoders' RGB conv has no ReLU, as in that network.

Widths and cut level are inferred from tensor shapes, then checked by a strict load.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..core.digest import sha256_file
from ..core.errors import CheckpointError
from ..surgery.embed import EmbeddingBranches
from .checkpoint import load_weights, read_state_dict
from .format import CDModel
from .release import RELEASE_VARIANTS
from .vgg import LEVELS, VGGDecoder, VGGEncoder, VGGSpec, conv_names

_CONV_KEY = re.compile(r"^conv(\d)(\d)\.weight$")
_AUX_KEY = re.compile(r"^conv(\d)(\d)_aux\.weight$")

#: torchvision ``vgg19().features`` indices of conv11 .. conv51.
TORCHVISION_CONV_INDEX: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _level_from_convs(convs: list[str], source: str | Path) -> int:
    if not convs:
        raise CheckpointError(f"{source}: no VGG conv layers (conv11.weight ...) found; is this a VGG-family checkpoint?")
    level = max(int(name[4]) for name in convs)
    expected = conv_names(level)
    if sorted(convs) != sorted(expected):
        missing = sorted(set(expected) - set(convs))
        extra = sorted(set(convs) - set(expected))
        raise CheckpointError(
            f"{source}: conv layers do not form a level-{level} VGG cut (missing {missing}, unexpected {extra}); "
            "check that the file is a complete encoder/decoder"
        )
    return level


def encoder_from_state_dict(
    state: Mapping[str, torch.Tensor], source: str | Path, padding: str = "reflect"
) -> tuple[VGGEncoder, EmbeddingBranches | None]:
    """Build an encoder (and its ``conv*_aux`` branches, if any) whose spec fits ``state``."""
    convs = [f"conv{m[1]}{m[2]}" for m in map(_CONV_KEY.match, state) if m]
    level = _level_from_convs(convs, source)
    widths = tuple(int(state[f"{name}.weight"].shape[0]) for name in conv_names(level))
    encoder = VGGEncoder(VGGSpec(level, widths, padding))
    aux = {k: v for k, v in state.items() if "_aux." in k}
    load_weights(encoder, {k: v for k, v in state.items() if k not in aux}, source)
    return encoder, _branches_from_aux(aux, source)


def _branches_from_aux(aux: Mapping[str, torch.Tensor], source: str | Path) -> EmbeddingBranches | None:
    if not aux:
        return None
    taps = {}
    for key, weight in aux.items():
        m = _AUX_KEY.match(key)
        if m:
            taps[f"relu{m[1]}_{m[2]}"] = (int(weight.shape[1]), int(weight.shape[0]))
    branches = EmbeddingBranches(taps)
    renamed = {}
    for key, value in aux.items():
        conv, param = key.split(".", 1)
        renamed[f"relu{conv[4]}_{conv[5]}.{param}"] = value
    load_weights(branches, renamed, source)
    return branches


def decoder_from_state_dict(state: Mapping[str, torch.Tensor], source: str | Path, padding: str = "reflect") -> VGGDecoder:
    """Build a decoder whose spec fits ``state`` (decoder ``convXY`` maps widths[XY] back)."""
    convs = [f"conv{m[1]}{m[2]}" for m in map(_CONV_KEY.match, state) if m]
    level = _level_from_convs(convs, source)
    widths = tuple(int(state[f"{name}.weight"].shape[1]) for name in conv_names(level))
    decoder = VGGDecoder(VGGSpec(level, widths, padding))
    load_weights(decoder, state, source)
    return decoder


def convert_cd_release(
    directory: str | Path,
    variant: str = "student",
    levels: tuple[int, ...] = LEVELS,
    encoder_pattern: str | None = None,
    decoder_pattern: str | None = None,
) -> CDModel:
    """Convert the paper's per-level release files in ``directory`` into one multi-level model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; pass the folder holding se1.pth .. sd5.pth")
    if variant not in RELEASE_VARIANTS:
        raise CheckpointError(f"unknown release variant {variant!r}; choose one of {sorted(RELEASE_VARIANTS)}")
    enc_pattern, dec_pattern = RELEASE_VARIANTS[variant]
    enc_pattern, dec_pattern = encoder_pattern or enc_pattern, decoder_pattern or dec_pattern
    model = CDModel()
    files: dict[str, str] = {}
    for level in levels:
        enc_path, dec_path = directory / enc_pattern.format(k=level), directory / dec_pattern.format(k=level)
        for path in (enc_path, dec_path):
            if not path.is_file():
                raise CheckpointError(f"{path}: missing release file for level {level}; pass --levels to convert fewer")
        encoder, branches = encoder_from_state_dict(read_state_dict(enc_path), enc_path)
        _expect_level(encoder.spec.level, level, enc_path)
        decoder = decoder_from_state_dict(read_state_dict(dec_path), dec_path)
        _expect_level(decoder.spec.level, level, dec_path)
        model.encoders[level], model.decoders[level] = encoder, decoder
        if branches is not None:
            model.branches[level] = branches
        files[enc_path.name], files[dec_path.name] = sha256_file(enc_path), sha256_file(dec_path)
    model.meta = {
        "name": f"cd-release-{variant}",
        "source": {"kind": "cd-release", "variant": variant, "path": str(directory), "files_sha256": files},
        "normalisation": "conv0: RGB[0,1] -> Caffe BGR*255 minus VGG mean",
    }
    return model


def _expect_level(found: int, wanted: int, path: Path) -> None:
    if found != wanted:
        raise CheckpointError(f"{path}: holds a level-{found} network where level {wanted} was expected; check the file names")


def torchvision_to_encoder_state(state: Mapping[str, torch.Tensor], source: str | Path) -> dict[str, torch.Tensor]:
    """Rename torchvision VGG-19 ``features.N`` keys and fold ImageNet normalisation into ``conv0``."""
    out: dict[str, torch.Tensor] = {}
    for name, index in zip(conv_names(5), TORCHVISION_CONV_INDEX, strict=False):
        for param in ("weight", "bias"):
            key = f"features.{index}.{param}"
            if key not in state:
                raise CheckpointError(
                    f"{source}: missing {key}; expected a torchvision VGG-19 state dict (vgg19-*.pth)"
                )
            out[f"{name}.{param}"] = state[key]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    # conv0(x) = (x - mean) / std per channel: a diagonal 1x1 conv.
    out["conv0.weight"] = torch.diag(1.0 / std).reshape(3, 3, 1, 1)
    out["conv0.bias"] = -mean / std
    return out


def convert_torchvision(
    path: str | Path,
    padding: str = "reflect",
    decoders_dir: str | Path | None = None,
    decoder_pattern: str = "d{k}.pth",
) -> CDModel:
    """A VGG-19 teacher (one level-5 encoder serving levels 1..5) from torchvision weights.

    ``decoders_dir`` optionally adds full-width teacher decoders (the paper's ``d{k}`` files).
    ``padding="zeros"`` reproduces torchvision's own convolution padding exactly.
    """
    path = Path(path)
    encoder = VGGEncoder(VGGSpec.vgg19(5, padding))
    load_weights(encoder, torchvision_to_encoder_state(read_state_dict(path), path), path)
    model = CDModel(encoders={5: encoder})
    files = {path.name: sha256_file(path)}
    if decoders_dir is not None:
        for level in LEVELS:
            dec_path = Path(decoders_dir) / decoder_pattern.format(k=level)
            if dec_path.is_file():
                model.decoders[level] = decoder_from_state_dict(read_state_dict(dec_path), dec_path, padding)
                files[dec_path.name] = sha256_file(dec_path)
        if not model.decoders:
            raise CheckpointError(f"{decoders_dir}: no decoder files matching {decoder_pattern!r}; check --decoder-pattern")
    model.meta = {
        "name": "vgg19-torchvision",
        "source": {"kind": "torchvision", "path": str(path), "files_sha256": files},
        "normalisation": "conv0: ImageNet mean/std on RGB[0,1]",
    }
    return model


def teacher_architecture(levels: tuple[int, ...] = (5,), with_decoders: bool = True, padding: str = "reflect") -> CDModel:
    """Randomly initialised VGG-19 teacher architecture (for inspection and cost benchmarks)."""
    model = CDModel(encoders={max(levels): VGGEncoder(VGGSpec.vgg19(max(levels), padding))})
    if with_decoders:
        model.decoders = {k: VGGDecoder(VGGSpec.vgg19(k, padding)) for k in levels}
    model.meta = {"name": "vgg19-architecture", "source": {"kind": "architecture", "weights": "random"}}
    return model


def student_architecture(ratio: float = 0.25, levels: tuple[int, ...] = LEVELS, padding: str = "reflect") -> CDModel:
    """Randomly initialised slim students, one encoder/decoder pair per level at ``ratio`` width."""
    specs = {k: VGGSpec.vgg19(k, padding).scaled(ratio) for k in levels}
    model = CDModel(
        encoders={k: VGGEncoder(s) for k, s in specs.items()},
        decoders={k: VGGDecoder(s) for k, s in specs.items()},
    )
    model.meta = {"name": f"vgg19-x{ratio:g}-architecture", "source": {"kind": "architecture", "weights": "random"}}
    return model


#: File names of the WCT teacher's PyTorch conversion (pietrocarbo/deep-transfer, models/autoencoder_vgg19/vgg19_k).
WCT_FILES = ("vgg_normalised_conv{k}_1.pth", "feature_invertor_conv{k}_1.pth")
_SEQUENTIAL_KEY = re.compile(r"^(\d+)\.(weight|bias)$")


def _sequential_convs(state: Mapping[str, torch.Tensor], source: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each conv of an ``nn.Sequential`` state dict, in layer order."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _SEQUENTIAL_KEY.match(key)
        if not match:
            raise CheckpointError(f"{source}: unexpected key {key!r}; expected an nn.Sequential state dict ('0.weight', ...) "
                                  "of the WCT conversion")
        layers.setdefault(int(match[1]), {})[match[2]] = tensor
    convs = []
    for index in sorted(layers):
        layer = layers[index]
        if set(layer) != {"weight", "bias"} or layer["weight"].dim() != 4:
            raise CheckpointError(f"{source}: layer {index} is not a convolution with bias; is this a WCT encoder/decoder file?")
        convs.append((layer["weight"], layer["bias"]))
    return convs


def _wct_state(names: list[str], convs: list[tuple[torch.Tensor, torch.Tensor]], source: Path) -> dict[str, torch.Tensor]:
    if len(convs) != len(names):
        raise CheckpointError(f"{source}: {len(convs)} convolutions, a level-{int(names[-1][4]) if names else 0} "
                              f"WCT file has {len(names)}; the file does not match its name")
    return {f"{name}.{part}": tensor for name, (w, b) in zip(names, convs, strict=True)
            for part, tensor in (("weight", w), ("bias", b))}


def wct_levels(directory: str | Path) -> list[int]:
    """Levels whose encoder and decoder files are both in ``directory``."""
    return [k for k in LEVELS if all((Path(directory) / f.format(k=k)).is_file() for f in WCT_FILES)]


def convert_wct_pytorch(directory: str | Path) -> CDModel:
    """The WCT VGG-19 teacher: the deepest encoder present (serving every shallower level) and one trained
    decoder per level, from whatever levels ``directory`` holds. Shared layers must agree across the per-level
    encoder files (they are truncations of one VGG-19)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; pass the folder holding vgg_normalised_conv{{k}}_1.pth files")
    levels = wct_levels(directory)
    if not levels:
        raise CheckpointError(f"{directory}: no level has both {WCT_FILES[0].format(k='K')} and {WCT_FILES[1].format(k='K')}; "
                              "download them with `cdcompress weights download wct-vgg19`")
    encoders: dict[int, VGGEncoder] = {}
    decoders: dict[int, VGGDecoder] = {}
    for k in levels:
        enc_path, dec_path = (directory / f.format(k=k) for f in WCT_FILES)
        enc_state = _wct_state(["conv0", *conv_names(k)], _sequential_convs(read_state_dict(enc_path), enc_path), enc_path)
        widths = tuple(int(enc_state[f"{name}.weight"].shape[0]) for name in conv_names(k))
        encoders[k] = VGGEncoder(VGGSpec(k, widths, ceil_pool=True))
        load_weights(encoders[k], enc_state, enc_path)
        dec_state = _wct_state(list(reversed(conv_names(k))), _sequential_convs(read_state_dict(dec_path), dec_path), dec_path)
        decoders[k] = VGGDecoder(VGGSpec(k, widths, output_relu=False))
        load_weights(decoders[k], dec_state, dec_path)
    deepest = max(levels)
    _check_truncations(encoders, deepest, directory)
    files = {f.format(k=k): sha256_file(directory / f.format(k=k)) for k in levels for f in WCT_FILES}
    return CDModel(encoders={deepest: encoders[deepest]}, decoders=decoders,
                   meta={"name": "wct-vgg19", "normalisation": "conv0: RGB [0,1] -> Caffe BGR*255 minus the VGG mean",
                         "source": {"kind": "wct-pytorch", "directory": str(directory), "levels": levels,
                                    "sha256": files}})


def _check_truncations(encoders: Mapping[int, VGGEncoder], deepest: int, directory: Path) -> None:
    full = encoders[deepest].state_dict()
    for k, encoder in encoders.items():
        for key, tensor in encoder.state_dict().items():
            if not torch.equal(tensor, full[key]):
                raise CheckpointError(f"{directory}: {WCT_FILES[0].format(k=k)} and {WCT_FILES[0].format(k=deepest)} "
                                      f"disagree at {key}; the files are not cut from one VGG-19 (mixed downloads?)")
