"""The ``cdcompress`` command line: a thin click shell over the Python API.

Each sub-module registers one command family on :data:`main`, imported when one of its commands is
used (see :data:`cdcompress.cli.main.COMMANDS`); user errors (:class:`~cdcompress.core.errors.CDCompressError`)
become ``error: ...`` with exit code 2.
"""

from .main import main

__all__ = ["main"]
