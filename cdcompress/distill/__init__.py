"""The three stages of Collaborative Distillation and the trainer that runs them."""

from ..modules import freeze, reinitialize
from .distiller import OBJECTIVES, Distiller, ObjectiveContext, apply, reconstruction_objective, style_transfer_objective
from .stages import train_decoder
from .trainer import TrainConfig, Trainer, TrainingError, TrainResult

__all__ = [
    "OBJECTIVES",
    "Distiller",
    "ObjectiveContext",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "apply",
    "freeze",
    "reconstruction_objective",
    "reinitialize",
    "style_transfer_objective",
    "train_decoder",
]
