"""User-facing errors.

Anything a user can cause (a bad path, a corrupt checkpoint, a malformed recipe) raises
:class:`CDCompressError` with a one-line message that names the problem and the fix. The CLI
turns it into ``error: ...`` and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import reprlib


class CDCompressError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class CheckpointError(CDCompressError):
    """A weights file that cannot be read safely or does not fit the architecture."""


class ModelFormatError(CDCompressError):
    """A saved model directory that is incomplete, corrupt or of an unknown format."""


class ImageError(CDCompressError):
    """An image that cannot be decoded or is outside the supported bounds."""


def _short_repr() -> reprlib.Repr:
    limited = reprlib.Repr()
    limited.maxstring = limited.maxother = 60
    limited.maxlist = limited.maxtuple = limited.maxdict = limited.maxset = 4
    limited.maxlevel = 2
    return limited


#: ``repr`` cut short for messages: a hostile input must not become a megabyte-long error line.
short_repr = _short_repr().repr


class SlimmingError(CDCompressError):
    """Slimming could not produce the requested widths."""


class RegistryError(CDCompressError):
    """A plug-in name that is not registered, or a plug-in reference that is malformed."""
