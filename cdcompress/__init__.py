"""cdcompress: Collaborative Distillation for encoder-decoder networks."""

from . import denoise as denoise  # registers the noisy-pairs data source
from . import export as export
from .data import Batch
from .distill import Distiller, ObjectiveContext, TrainConfig, apply
from .errors import CDCompressError
from .models import CDModel, VGGDecoder, VGGEncoder, VGGSpec, load, save, save_pair
from .registry import ARCHITECTURES
from .slim import Slimming
from .stylize import stylize as stylize  # the API function; the subpackage stays importable by name

__version__ = "0.1.0"

__all__ = ["ARCHITECTURES", "Batch", "CDCompressError", "CDModel", "Distiller", "ObjectiveContext", "Slimming",
           "TrainConfig", "VGGDecoder", "VGGEncoder", "VGGSpec", "__version__", "apply", "export", "load", "save", "save_pair",
           "stylize"]
