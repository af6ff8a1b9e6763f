"""cdcompress: Collaborative Distillation for encoder-decoder networks."""

from .distill import apply
from .errors import CDCompressError
from .models import CDModel, VGGDecoder, VGGEncoder, VGGSpec, load, save
from .stylize import stylize as stylize  # the API function; the subpackage stays importable by name

__version__ = "0.1.0"

__all__ = ["CDCompressError", "CDModel", "VGGDecoder", "VGGEncoder", "VGGSpec", "__version__", "apply", "load", "save",
           "stylize"]
