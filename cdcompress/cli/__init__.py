"""The ``cdcompress`` command line: a thin click shell over the Python API.

Each sub-module registers one command family on :data:`main`; user errors
(:class:`~cdcompress.errors.CDCompressError`) become ``error: ...`` with exit code 2.
"""

from . import evaluate as _evaluate  # noqa: F401  (registers eval)
from . import models as _models  # noqa: F401  (registers inspect, convert)
from .main import main

__all__ = ["main"]
