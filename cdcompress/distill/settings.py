"""The choices a training stage offers, in one place for the recipe schema and the trainer (no torch here)."""

from __future__ import annotations

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")
AMP_MODES: tuple[str, ...] = ("off", "bf16", "fp16")
SYNC_BATCHNORM: tuple[str, ...] = ("auto", "on", "off")
#: How stage 3's decoder starts: the slimmed collaborator, the same with the output branch Q folded into its
#: first conv (VGG pairs), or re-initialised.
DECODER_INITS: tuple[str, ...] = ("pruned", "folded", "random")
