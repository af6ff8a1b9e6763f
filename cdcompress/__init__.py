"""cdcompress: Collaborative Distillation for encoder-decoder networks.

Public names load on first use, so ``import cdcompress`` and ``cdcompress --help`` do not import torch.
``cdcompress.stylize`` is the stylize function; its machinery is the ``cdcompress.stylization`` subpackage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ARCHITECTURES": ".core.registry",
    "Batch": ".data.batches",
    "CDCompressError": ".core.errors",
    "CDModel": ".models.format",
    "Distiller": ".distill.distiller",
    "ObjectiveContext": ".distill.objectives",
    "Slimming": ".surgery.slim",
    "TrainConfig": ".distill.trainer",
    "VGGDecoder": ".models.vgg",
    "VGGEncoder": ".models.vgg",
    "VGGSpec": ".models.vgg",
    "apply": ".distill.distiller",
    "load": ".models.format",
    "save": ".models.format",
    "save_pair": ".models.format",
    "stylize": ".stylization.pipeline",
}
_SUBMODULES = ("export",)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
__all__ = sorted([*_EXPORTS, *_SUBMODULES, "__version__"])

if TYPE_CHECKING:  # what static checkers see; at run time the names load on first use
    from . import export as export
    from .core.errors import CDCompressError as CDCompressError
    from .core.registry import ARCHITECTURES as ARCHITECTURES
    from .data.batches import Batch as Batch
    from .distill.distiller import Distiller as Distiller
    from .distill.distiller import apply as apply
    from .distill.objectives import ObjectiveContext as ObjectiveContext
    from .distill.trainer import TrainConfig as TrainConfig
    from .models.format import CDModel as CDModel
    from .models.format import load as load
    from .models.format import save as save
    from .models.format import save_pair as save_pair
    from .models.vgg import VGGDecoder as VGGDecoder
    from .models.vgg import VGGEncoder as VGGEncoder
    from .models.vgg import VGGSpec as VGGSpec
    from .stylization.pipeline import stylize as stylize
    from .surgery.slim import Slimming as Slimming
