"""The choices a training stage offers, in one place for the recipe schema and the trainer (no torch here)."""

from __future__ import annotations

import re

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
SYNC_BATCHNORM: tuple[str, ...] = ("auto", "on", "off")
#: How stage 3's decoder starts: the slimmed collaborator, the same with the output branch Q folded into its
#: first conv (VGG pairs), or re-initialised.
DECODER_INITS: tuple[str, ...] = ("pruned", "folded", "random")

#: Lower bounds of the numeric training settings, shared by the recipe schema (pydantic ``Field(**bound(name))``)
#: and :class:`~cdcompress.distill.trainer.TrainConfig`, so the Python API refuses exactly what a recipe refuses.
#: ``gt``: must be > 0 (a count or rate that divides or scales); ``ge``: may be 0 (0 = off).
LOWER_BOUNDS: dict[str, str] = {
    "steps": "gt", "lr": "gt", "log_every": "gt", "accumulate": "gt", "keep_checkpoints": "gt", "sample_count": "gt",
    "gamma": "gt", "weight_decay": "ge", "warmup_steps": "ge", "step_size": "ge", "grad_clip": "ge",
    "checkpoint_every": "ge", "sample_every": "ge", "eval_every": "ge", "workers": "ge", "lr_floor": "ge",
}
#: Devices a run can name (``torch.device`` accepts more, but only these are supported).
DEVICE_PATTERN = r"(cpu|cuda(:\d+)?|mps)"


def bound(name: str) -> dict[str, int]:
    """``{"gt": 0}`` or ``{"ge": 0}``: the pydantic ``Field`` keyword of ``name``'s lower bound."""
    return {LOWER_BOUNDS[name]: 0}


def bound_problem(name: str, value: float) -> str | None:
    """Why ``value`` breaks ``name``'s lower bound (NaN and infinity included), or None."""
    if value != value or value in (float("inf"), float("-inf")):
        return f"{name} must be a finite number, got {value}"
    strict = LOWER_BOUNDS[name] == "gt"
    if value > 0 or (value == 0 and not strict):
        return None
    return f"{name} must be {'> 0' if strict else '>= 0'}, got {value}"


def device_problem(device: object) -> str | None:
    """Why ``device`` is not a supported device string, or None."""
    if isinstance(device, str) and re.fullmatch(DEVICE_PATTERN, device):
        return None
    return "device must be cpu, cuda, cuda:N or mps"
