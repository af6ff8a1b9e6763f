"""VGG-style encoders and their mirrored decoders, for any cut level and any widths.

One builder serves the VGG-19 teacher, the paper's 16x students and any slimmer student: a
network is fully described by :class:`VGGSpec` (cut level, per-conv widths, padding mode).
Module names follow the released checkpoints (``conv0``, ``conv11`` ... ``conv51``) so their
state dicts load without renaming; activations are modules named ``relu1_1`` ... so callers
(feature taps, embedding branches, pruning) can hook them by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

#: Convolutions per VGG-19 stage (conv{stage}{index}).
STAGE_CONVS: tuple[int, ...] = (2, 2, 4, 4, 4)
#: VGG-19 widths of conv11 .. conv51, the 13 convolutions up to relu5_1.
VGG19_WIDTHS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512)
LEVELS: tuple[int, ...] = (1, 2, 3, 4, 5)
PADDING_MODES: tuple[str, ...] = ("reflect", "zeros")


def conv_names(level: int) -> list[str]:
    """Names of the 3x3 convolutions an encoder cut at ``relu{level}_1`` contains, in order."""
    _check_level(level)
    names = []
    for stage, count in enumerate(STAGE_CONVS, start=1):
        if stage == level:
            names.append(f"conv{stage}1")
            return names
        names.extend(f"conv{stage}{i}" for i in range(1, count + 1))
    raise AssertionError("unreachable")


def relu_name(conv: str) -> str:
    """``conv34`` -> ``relu3_4``: the activation following a convolution."""
    return f"relu{conv[4]}_{conv[5:]}"


def level_taps(level: int) -> list[str]:
    """The paper's feature taps ``relu1_1`` .. ``relu{level}_1`` inside a level-``level`` encoder."""
    return [f"relu{k}_1" for k in range(1, level + 1)]


def _check_level(level: int) -> None:
    if level not in LEVELS:
        raise ValueError(f"VGG cut level must be one of {LEVELS}, got {level!r}")


@dataclass(frozen=True)
class VGGSpec:
    """Architecture of a VGG encoder cut at ``relu{level}_1`` (or of the decoder mirroring it).

    ``widths`` gives the output channels of conv11 .. conv{level}1 in order; a decoder built from
    the same spec consumes ``widths[-1]`` channels and maps back through the same widths to RGB.
    ``ceil_pool`` (max-pooling rounds odd sizes up) and ``output_relu=False`` (no ReLU after the RGB
    conv) describe the original WCT teacher; the paper's released students use the defaults.
    """

    level: int
    widths: tuple[int, ...] = field(default=())
    padding: str = "reflect"
    ceil_pool: bool = False
    output_relu: bool = True

    def __post_init__(self) -> None:
        _check_level(self.level)
        widths = tuple(int(w) for w in (self.widths or VGG19_WIDTHS[: len(conv_names(self.level))]))
        object.__setattr__(self, "widths", widths)
        expected = len(conv_names(self.level))
        if len(widths) != expected:
            raise ValueError(
                f"a level-{self.level} VGG spec needs {expected} widths (conv11..conv{self.level}1), "
                f"got {len(widths)}"
            )
        if any(w < 1 for w in widths):
            raise ValueError(f"VGG widths must be positive, got {list(widths)}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")

    @classmethod
    def vgg19(cls, level: int, padding: str = "reflect") -> VGGSpec:
        """The full-width VGG-19 teacher cut at ``relu{level}_1``."""
        return cls(level, VGG19_WIDTHS[: len(conv_names(level))], padding)

    def scaled(self, ratio: float) -> VGGSpec:
        """Same topology with every width multiplied by ``ratio`` (at least one channel)."""
        return replace(self, widths=tuple(max(1, round(w * ratio)) for w in self.widths))

    def truncated(self, level: int) -> VGGSpec:
        """The spec of the shallower encoder this one contains."""
        if level > self.level:
            raise ValueError(f"cannot cut a level-{self.level} spec at deeper level {level}")
        return replace(self, level=level, widths=self.widths[: len(conv_names(level))])

    @property
    def convs(self) -> list[str]:
        return conv_names(self.level)

    @property
    def width_of(self) -> dict[str, int]:
        return dict(zip(self.convs, self.widths, strict=False))

    @property
    def out_channels(self) -> int:
        return self.widths[-1]

    @property
    def stride(self) -> int:
        """Total spatial downsampling of the encoder (inputs should be multiples of it)."""
        return 2 ** (self.level - 1)

    def to_dict(self) -> dict:
        data = {"level": self.level, "widths": list(self.widths), "padding": self.padding}
        if self.ceil_pool:
            data["ceil_pool"] = True
        if not self.output_relu:
            data["output_relu"] = False
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> VGGSpec:
        return cls(int(data["level"]), tuple(int(w) for w in data["widths"]), str(data.get("padding", "reflect")),
                   bool(data.get("ceil_pool", False)), bool(data.get("output_relu", True)))


def _conv3x3(cin: int, cout: int, padding: str) -> nn.Conv2d:
    # Reflection padding is applied in forward (the released nets pad explicitly, then conv with padding 0).
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1 if padding == "zeros" else 0)


_FUSED_INFERENCE: ContextVar[bool] = ContextVar("cdcompress_fused_inference", default=False)


@contextmanager
def fused_inference() -> Iterator[None]:
    """Run no-grad VGG forwards inside this block without padded copies and with in-place ReLUs.

    Reflection padding cannot happen inside a convolution kernel, so the plain forward writes a
    padded copy of every activation; on slim students that copy and the out-of-place ReLU are a
    quarter of the stylization time (each grows with width, while the convolution's MACs grow with
    its square). The fused forward gives the same numbers (see :func:`reflect_conv3x3`). It is
    opt-in and scoped, because export tracing and training must see the plain graph.
    """
    token = _FUSED_INFERENCE.set(True)
    try:
        yield
    finally:
        _FUSED_INFERENCE.reset(token)


def reflect_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(reflect_pad(x, 1))`` for a stride-1 3x3 ``conv``, without the padded copy of ``x``.

    The zero-padded convolution (padding is native to the kernel) is already right everywhere but
    on the one-pixel frame; the four frame lines are recomputed from two-line strips of ``x``
    that are reflection-padded on their own (a few lines instead of the whole image).
    """
    weight, bias = conv.weight, conv.bias
    out = F.conv2d(x, weight, bias, padding=1)
    out[:, :, :1, :] = F.conv2d(F.pad(x[:, :, :2, :], (1, 1, 1, 0), mode="reflect"), weight, bias)
    out[:, :, -1:, :] = F.conv2d(F.pad(x[:, :, -2:, :], (1, 1, 0, 1), mode="reflect"), weight, bias)
    out[:, :, :, :1] = F.conv2d(F.pad(x[:, :, :, :2], (1, 0, 1, 1), mode="reflect"), weight, bias)
    out[:, :, :, -1:] = F.conv2d(F.pad(x[:, :, :, -2:], (0, 1, 1, 1), mode="reflect"), weight, bias)
    return out


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class _VGGBase(nn.Module):
    """Shared forward: run ``self.plan`` (module names in order), padding before 3x3 convs."""

    spec: VGGSpec
    plan: list[str]

    def _run(
        self, x: torch.Tensor, taps: Iterable[str] = (), stop_after_taps: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the plan, collecting ``taps``; optionally stop at the deepest tap (no wasted work)."""
        wanted = list(taps)
        unknown = set(wanted).difference(self.plan)
        if unknown:
            raise KeyError(f"unknown feature tap(s) {sorted(unknown)}; available: {self.tap_names}")
        plan = self.plan
        if stop_after_taps and wanted:
            plan = plan[: max(plan.index(t) for t in wanted) + 1]
        found: dict[str, torch.Tensor] = {}
        fused = _FUSED_INFERENCE.get() and not torch.is_grad_enabled()
        for step, name in enumerate(plan):
            module = getattr(self, name)
            if fused and not _has_hooks(module):
                x = self._fused_step(module, x, owned=step > 0 and plan[step - 1] not in found)
            else:
                if self.spec.padding == "reflect" and isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
                    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
                x = module(x)
            if name in wanted:
                found[name] = x
        return x, found

    def _fused_step(self, module: nn.Module, x: torch.Tensor, owned: bool) -> torch.Tensor:
        """One plan step of :func:`fused_inference`. ReLU runs in place only on an ``owned`` tensor:
        one this forward made (not the caller's input) and did not hand out as a tap."""
        if self.spec.padding == "reflect" and isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            if module.stride == (1, 1) and module.dilation == (1, 1) and module.groups == 1:
                return reflect_conv3x3(x, module)
            return module(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if isinstance(module, nn.ReLU) and owned:
            return torch.relu_(x)
        return module(x)

    @property
    def tap_names(self) -> list[str]:
        return [n for n in self.plan if n.startswith("relu")]


class VGGEncoder(_VGGBase):
    """RGB in [0, 1] (NCHW) -> features at ``relu{level}_1``.

    ``conv0`` is a 1x1 input-normalisation layer (no activation): for the released models it maps
    RGB[0,1] to Caffe's mean-subtracted BGR*255; for torchvision weights it holds ImageNet mean/std.
    """

    def __init__(self, spec: VGGSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv0 = nn.Conv2d(3, 3, kernel_size=1)
        self.plan = ["conv0"]
        cin = 3
        stage = 1
        for name, width in zip(spec.convs, spec.widths, strict=False):
            if int(name[4]) != stage:
                stage = int(name[4])
                pool = f"pool{stage - 1}"
                self.add_module(pool, nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=spec.ceil_pool))
                self.plan.append(pool)
            self.add_module(name, _conv3x3(cin, width, spec.padding))
            self.add_module(relu_name(name), nn.ReLU())
            self.plan += [name, relu_name(name)]
            cin = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def sync_spec(self) -> None:
        """Re-read the widths from the layers (after channel slimming changed them)."""
        self.spec = replace(self.spec, widths=tuple(getattr(self, n).out_channels for n in self.spec.convs))

    def features(self, x: torch.Tensor, taps: Iterable[str]) -> dict[str, torch.Tensor]:
        """Activations at the named taps (e.g. ``relu1_1``, ``relu3_1``) in one pass."""
        return self._run(x, taps, stop_after_taps=True)[1]

    def truncated(self, level: int) -> VGGEncoder:
        """A shallower encoder with a copy of this one's weights."""
        shallow = VGGEncoder(self.spec.truncated(level))
        own = self.state_dict()
        shallow.load_state_dict({k: own[k] for k in shallow.state_dict()})
        reference = next(self.parameters())
        return shallow.to(reference.device, reference.dtype)


class VGGDecoder(_VGGBase):
    """Features at ``relu{level}_1`` -> RGB, mirroring a :class:`VGGEncoder` of the same spec.

    The decoder conv named like an encoder conv undoes it: ``convXY`` maps that conv's width back
    to the width before it (``conv11`` maps to 3 channels). Every conv is followed by ReLU (the last
    one too, unless ``spec.output_relu`` is False), and nearest 2x upsampling follows each
    ``conv{j}1`` with j >= 2.
    """

    def __init__(self, spec: VGGSpec) -> None:
        super().__init__()
        self.spec = spec
        self.plan = []
        names = spec.convs
        for i in range(len(names) - 1, -1, -1):
            name = names[i]
            cout = spec.widths[i - 1] if i > 0 else 3
            self.add_module(name, _conv3x3(spec.widths[i], cout, spec.padding))
            self.plan.append(name)
            if i > 0 or spec.output_relu:
                self.add_module(relu_name(name), nn.ReLU())
                self.plan.append(relu_name(name))
            if name.endswith("1") and name != "conv11":
                up = f"up{name[4]}"
                self.add_module(up, nn.Upsample(scale_factor=2, mode="nearest"))
                self.plan.append(up)
        self.reset_output_bias()

    def reset_output_bias(self) -> None:
        """Start the RGB output at mid-grey: behind the final ReLU a negative start can leave a
        colour channel dead (zero gradient forever) in a freshly initialised decoder."""
        nn.init.constant_(self.conv11.bias, 0.5)

    def sync_spec(self) -> None:
        """Re-read the widths from the layers (after channel slimming changed them)."""
        self.spec = replace(self.spec, widths=tuple(getattr(self, n).in_channels for n in self.spec.convs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

