"""The ``cdcompress`` command line: a thin click shell over the Python API.

Each sub-module registers one command family on :data:`main`; user errors
(:class:`~cdcompress.errors.CDCompressError`) become ``error: ...`` with exit code 2.
"""

from . import demo as _demo  # noqa: F401  (registers demo)
from . import distill as _distill  # noqa: F401  (registers distill, recipes, weights)
from . import evaluate as _evaluate  # noqa: F401  (registers eval)
from . import export as _export  # noqa: F401  (registers export)
from . import models as _models  # noqa: F401  (registers inspect, convert)
from . import stylize as _stylize  # noqa: F401  (registers stylize)
from .main import main

__all__ = ["main"]
