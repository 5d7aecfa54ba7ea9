"""The in-memory microscopy image: one canonical layout, whatever the file looked like.

Every image samlib reads becomes a :class:`MicroscopyImage` whose ``data`` is a 4-D array
``(planes, Y, X, channels)`` in the file's own dtype (uint8, uint16, int32, float32 with NaN,
...). "Planes" are every non-spatial, non-channel axis flattened in file order (z-slices,
time points, series). Measurements use this original data; display uses
:func:`samlib.image.display.to_rgb8`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from samlib.errors import (
    CorruptImageError,
    ImageTooLargeError,
    ParameterError,
    UnsupportedImageError,
)

#: Axis letters read as channels (tifffile: C = channel, S = sample, e.g. RGB).
CHANNEL_AXES = frozenset("CS")
#: A trailing axis this small, after two larger ones, is read as channels-last (YXC).
MAX_CHANNELS_LAST = 8
#: A leading axis this small, just before YX, is read as channels-first (CYX).
MAX_CHANNELS_FIRST = 5


@dataclass(frozen=True, eq=False)
class MicroscopyImage:
    """A microscopy image in the canonical layout ``(planes, Y, X, channels)``.

    Attributes
    ----------
    data : ndarray, shape (P, Y, X, C)
        The original pixel values, never rescaled; dtype as in the file.
    name : str
        Display name (usually the file name).
    axes : str
        How the source array's axes were read, one letter per source axis (tifffile
        letters: Y, X, C/S = channel, Z, T, Q = unknown plane axis, ...).
    source_shape : tuple of int
        Shape of the array as stored in the file, in the order of ``axes``.
    pixel_size_um : float or None
        Pixel size in micrometres per pixel, when the file records it.
    """

    data: np.ndarray
    name: str = "image"
    axes: str = "YX"
    source_shape: tuple[int, ...] = ()
    pixel_size_um: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 4:
            raise ParameterError(
                f"data must be (planes, Y, X, channels), got shape {self.data.shape}"
            )
        if 0 in self.data.shape:
            raise CorruptImageError(f"{self.name}: image has a zero-size axis, shape {self.shape}")

    @property
    def dtype(self) -> np.dtype:
        """The original dtype of the pixel values."""
        return self.data.dtype

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(planes, height, width, channels)``."""
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def n_planes(self) -> int:
        """Number of planes (z-slices x time points x ...)."""
        return self.data.shape[0]

    @property
    def height(self) -> int:
        """Number of rows (Y)."""
        return self.data.shape[1]

    @property
    def width(self) -> int:
        """Number of columns (X)."""
        return self.data.shape[2]

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return self.data.shape[3]

    @property
    def size_yx(self) -> tuple[int, int]:
        """``(height, width)`` in pixels, the order SAM's ``original_size`` uses."""
        return self.height, self.width

    def plane(self, index: int | str = 0) -> np.ndarray:
        """Return one plane, or the maximum projection over all planes, as ``(Y, X, C)``.

        Parameters
        ----------
        index : int or "max"
            Plane index (negative counts from the end) or ``"max"`` for the NaN-aware
            maximum intensity projection (NaN only where every plane is NaN).
        """
        if isinstance(index, str):
            if index != "max":
                raise ParameterError(f"plane must be an integer or 'max', got {index!r}")
            if self.n_planes == 1:
                return self.data[0]
            if np.issubdtype(self.dtype, np.floating):
                # fmax ignores NaN without a RuntimeWarning, unlike nanmax on all-NaN pixels.
                return np.fmax.reduce(self.data, axis=0)
            return self.data.max(axis=0)
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise ParameterError(f"plane must be an integer or 'max', got {index!r}")
        if not -self.n_planes <= index < self.n_planes:
            raise ParameterError(f"plane {index} out of range for {self.n_planes} plane(s)")
        return self.data[int(index)]

    def channel(self, index: int, plane: int | str = 0) -> np.ndarray:
        """Return one channel of one plane (or of the max projection) as ``(Y, X)``."""
        if not -self.n_channels <= index < self.n_channels:
            raise ParameterError(f"channel {index} out of range for {self.n_channels} channel(s)")
        return self.plane(plane)[..., index]

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the pixel data (see :func:`image_hash`), for cache keys."""
        return image_hash(self.data)

    def describe(self) -> str:
        """One line for the UI: name, source axes and shape, dtype, planes, size, channels."""
        return (
            f"{self.name}: {self.axes} {self.source_shape} {self.dtype} -> "
            f"{self.n_planes} plane(s), {self.height}x{self.width} px, "
            f"{self.n_channels} channel(s)"
        )


def image_hash(array: np.ndarray) -> str:
    """Return the hex SHA-256 of an array's bytes, shape and dtype (a cache key).

    Two arrays with equal values but different shape or dtype hash differently.
    """
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def guess_axes(shape: tuple[int, ...]) -> str:
    """Guess axis letters for an array without (trustworthy) metadata.

    Rules, in order: the last two large axes are Y, X; a trailing axis of at most
    ``MAX_CHANNELS_LAST`` after them is channels-last (``YXC``); otherwise an axis of at most
    ``MAX_CHANNELS_FIRST`` just before Y is channels-first (``CYX``, ``ZCYX``); for 4-D, a
    small first axis is channels (``CZYX``); every other axis is a plane axis ``Q``.
    Pass ``axes=`` explicitly when the guess is wrong (e.g. a 3-plane z-stack).
    """
    ndim = len(shape)
    if ndim < 2:
        raise UnsupportedImageError(f"an image needs at least 2 axes, got shape {shape}")
    if ndim == 2:
        return "YX"
    if (
        shape[-1] <= MAX_CHANNELS_LAST
        and shape[-2] > MAX_CHANNELS_LAST
        and shape[-3] > MAX_CHANNELS_LAST
    ):
        return "Q" * (ndim - 3) + "YXC"
    letters = ["Q"] * (ndim - 2) + ["Y", "X"]
    if shape[-3] <= MAX_CHANNELS_FIRST:
        letters[-3] = "C"
    elif ndim == 4 and shape[0] <= MAX_CHANNELS_FIRST:
        letters[0] = "C"
    return "".join(letters)


def _check_axes(axes: str, shape: tuple[int, ...]) -> str:
    axes = axes.upper()
    if len(axes) != len(shape):
        raise ParameterError(f"axes {axes!r} has {len(axes)} letters for an array of shape {shape}")
    if axes.count("Y") != 1 or axes.count("X") != 1:
        raise ParameterError(f"axes {axes!r} must contain exactly one Y and one X")
    if len(set(axes)) != len(axes) and any(axes.count(a) > 1 for a in "CSYX"):
        # Repeated plane letters (QQYX) are fine; repeated channel letters are ambiguous.
        raise ParameterError(f"axes {axes!r} repeats a channel or spatial letter")
    if not axes.isalpha():
        raise ParameterError(f"axes {axes!r} must be letters only")
    return axes


def as_image(
    array: np.ndarray,
    axes: str | None = None,
    *,
    name: str = "array",
    pixel_size_um: float | None = None,
    metadata: dict | None = None,
) -> MicroscopyImage:
    """Wrap an array of any supported layout as a :class:`MicroscopyImage`.

    Parameters
    ----------
    array : ndarray
        2-D or more; integer, bool or float dtype (NaN allowed).
    axes : str, optional
        One letter per axis (tifffile style): ``Y``, ``X``, ``C`` or ``S`` for channels,
        anything else (``Z``, ``T``, ``Q``, ...) for planes. ``None`` guesses with
        :func:`guess_axes`.
    name : str
        Display name.
    pixel_size_um : float, optional
        Pixel size in µm/px.
    """
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UnsupportedImageError(f"{name}: unsupported pixel type {array.dtype}")
    if array.ndim < 2:
        raise UnsupportedImageError(
            f"{name}: an image needs at least 2 axes, got shape {array.shape}"
        )
    if 0 in array.shape:
        raise CorruptImageError(f"{name}: image has a zero-size axis, shape {array.shape}")
    axes = guess_axes(array.shape) if axes is None else _check_axes(axes, array.shape)
    planes = [i for i, a in enumerate(axes) if a not in CHANNEL_AXES and a not in "YX"]
    chans = [i for i, a in enumerate(axes) if a in CHANNEL_AXES]
    order = [*planes, axes.index("Y"), axes.index("X"), *chans]
    p = int(np.prod([array.shape[i] for i in planes], dtype=np.int64))
    c = int(np.prod([array.shape[i] for i in chans], dtype=np.int64))
    data = array.transpose(order).reshape(
        p, array.shape[axes.index("Y")], array.shape[axes.index("X")], c
    )
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ParameterError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    return MicroscopyImage(
        data=data,
        name=name,
        axes=axes,
        source_shape=tuple(int(s) for s in array.shape),
        pixel_size_um=pixel_size_um,
        metadata=dict(metadata or {}),
    )


def check_size(shape: tuple[int, ...], label: str, max_pixels: int) -> None:
    """Raise :class:`ImageTooLargeError` when ``prod(shape) > max_pixels``; zero-size axes raise
    :class:`CorruptImageError`."""
    if 0 in shape:
        raise CorruptImageError(f"{label}: image has a zero-size axis, shape {tuple(shape)}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {n:,} pixel values (shape {tuple(shape)}) exceed the limit of "
            f"{max_pixels:,}; crop or downsample the image, or raise max_pixels"
        )
