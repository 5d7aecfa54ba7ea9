"""Exceptions raised by samlib.

Every error a user can cause derives from :class:`SamlibError`, so the UI and the CLI
can catch one type and show its message, which always names the offending value.
:func:`one_line` is how the app and the command line show any exception, samlib's or not.
"""

from __future__ import annotations


class SamlibError(Exception):
    """Base class of every error caused by user input or environment."""


class ImageError(SamlibError):
    """An image could not be read or converted."""


class UnsupportedImageError(ImageError):
    """The file is not an image format samlib reads, or its layout is not supported."""


class CorruptImageError(ImageError):
    """The file claims to be an image but cannot be decoded (truncated, damaged, empty)."""


class ImageTooLargeError(ImageError):
    """The image has more pixels (or a TIFF more pages) than the configured limit
    (decompression-bomb guard)."""


class ReferenceLabelsError(ImageError):
    """A reference label image does not fit its image: not whole-number labels, more than one
    channel or plane, or another width and height."""


class ModelError(SamlibError):
    """A model could not be found, built or loaded."""


class UnknownModelError(ModelError):
    """The name is neither a registered model nor an existing checkpoint file."""


class CheckpointError(ModelError):
    """A checkpoint file is truncated, unsafe, or does not match any SAM architecture."""


class DownloadError(ModelError):
    """A checkpoint download failed (network, HTTP status, or offline)."""


class ChecksumError(DownloadError):
    """A downloaded or cached file does not have the expected SHA-256."""


class ParameterError(SamlibError, ValueError):
    """A parameter is out of its valid range or of the wrong type."""


class PromptError(ParameterError):
    """Prompt points, labels or boxes are malformed or outside the image."""


class TooManyPromptsError(PromptError):
    """One call holds more prompts, or would return more mask memory, than the limits of
    :mod:`samlib.prompts.prompting` allow."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint needs full unpickling (it can run code) and the caller did not opt in."""


class ModelNotDownloadedError(ModelError):
    """A registered model's checkpoint is not in the local cache yet."""


class RecipeError(ParameterError):
    """A recipe (``params.json``) is not one samlib can replay: bad JSON, an unknown key,
    another version, or a value out of range."""


class ModelMismatchWarning(UserWarning):
    """The model loaded for a recipe is not the one that produced it (another SHA-256)."""


class CacheWarning(UserWarning):
    """A disk cache is damaged or cannot be written; the work goes on without it.

    An unreadable entry (truncated, bad CRC, wrong shape, broken metadata) is deleted and
    recomputed; a folder that cannot be written (read-only, full) keeps results in memory.
    """


class ImageWarning(UserWarning):
    """An image was read, but not all of it: e.g. a TIFF's other image series were dropped."""


class QuotaError(SamlibError):
    """A session asked the server to keep more than its share (uploaded checkpoints: how many
    files, or how many bytes together), as set by the person who started the server."""


def one_line(exc: BaseException) -> str:
    """The reason a user reads for ``exc``: one line, whitespace folded.

    A :class:`SamlibError` or ``OSError`` message names the value and stands alone; a
    ``MemoryError`` reads "not enough memory"; any other exception (a library's own error, or
    a bug) is prefixed with its type name, so that a report of it can be traced.
    """
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):
        return "not enough memory" + (f" ({text})" if text else "")
    if isinstance(exc, SamlibError | OSError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
