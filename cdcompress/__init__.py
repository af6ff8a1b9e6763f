"""cdcompress: Collaborative Distillation for encoder-decoder networks."""

from .errors import CDCompressError
from .models import CDModel, VGGDecoder, VGGEncoder, VGGSpec, load, save

__version__ = "0.1.0"

__all__ = ["CDCompressError", "CDModel", "VGGDecoder", "VGGEncoder", "VGGSpec", "__version__", "load", "save"]
