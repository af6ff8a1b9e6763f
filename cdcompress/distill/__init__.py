"""The three stages of Collaborative Distillation and the trainer that runs them (loaded on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_EXPORTS = {
    "Distiller": ".distiller", "apply": ".distiller",
    "OBJECTIVES": "..core.registry", "ObjectiveContext": ".objectives",
    "train_decoder": ".decoder",
    "TrainConfig": ".trainer", "TrainResult": ".trainer", "Trainer": ".trainer", "TrainingError": ".trainer",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what static checkers see; at run time the names load on first use
    from ..core.registry import OBJECTIVES as OBJECTIVES
    from .decoder import train_decoder as train_decoder
    from .distiller import Distiller as Distiller
    from .distiller import apply as apply
    from .objectives import ObjectiveContext as ObjectiveContext
    from .trainer import TrainConfig as TrainConfig
    from .trainer import Trainer as Trainer
    from .trainer import TrainingError as TrainingError
    from .trainer import TrainResult as TrainResult
