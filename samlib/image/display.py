"""Turn any microscopy image into the HWC uint8 RGB that SAM takes.

One function, :func:`to_rgb8`, with every choice explicit: which source channel feeds
R, G and B, the percentile range mapped to 0..255 (per channel), a gamma, and the plane.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from samlib.errors import ImageError, ImageTooLargeError, ParameterError
from samlib.image.microscopy import MicroscopyImage, as_image

DEFAULT_PERCENTILES = (1.0, 99.8)
#: Gamma outside this range is almost certainly a typo (e.g. 100 instead of 1.0).
GAMMA_RANGE = (0.05, 20.0)

ChannelChoice = int | None

#: Peak working memory of :func:`to_rgb8` per pixel of the plane (H x W), in bytes: the
#: output, one channel's scaling buffers and the percentile's copies. Measured with
#: tracemalloc over every dtype, 1-4 channels and NaN: 16-24 bytes for 8- and 16-bit data,
#: up to 29 for wider types, which are scaled in float64 (``python
#: benchmarks/request_limits.py convert``, benchmarks/README.md); so a uint8 plane needs
#: about 20 times its own size. A maximum projection adds its own (H, W, C) array.
CONVERSION_BYTES_PER_PIXEL = 24
#: The same for data wider than 16 bits (scaled in float64).
WIDE_CONVERSION_BYTES_PER_PIXEL = 32
#: The most working memory one conversion may take: 2 GiB, a plane of about 89 million
#: 8- or 16-bit pixels (9,400 x 9,400 px). Larger images are refused before anything is
#: allocated, so that a small compressed file cannot cost a server gigabytes.
MAX_CONVERSION_BYTES = 2 * 2**30


def default_channels(n_channels: int) -> tuple[ChannelChoice, ChannelChoice, ChannelChoice]:
    """Return the default source channel for R, G, B (``None`` = black).

    One channel is replicated to grey, two become red and green, three or more use the
    first three.
    """
    if n_channels == 1:
        return 0, 0, 0
    if n_channels == 2:
        return 0, 1, None
    return 0, 1, 2


def _check_channels(channels, n_channels: int) -> tuple[ChannelChoice, ...]:
    if channels is None:
        return default_channels(n_channels)
    if isinstance(channels, int | np.integer) and not isinstance(channels, bool):
        channels = (channels, channels, channels)
    if isinstance(channels, str) or not isinstance(channels, Sequence) or len(channels) != 3:
        raise ParameterError(
            f"channels must be None, one channel index, or 3 entries (R, G, B), got {channels!r}"
        )
    out = []
    for c in channels:
        if c is None:
            out.append(None)
            continue
        if isinstance(c, bool) or not isinstance(c, int | np.integer):
            raise ParameterError(f"channel entries must be integers or None, got {c!r}")
        if not -n_channels <= c < n_channels:
            raise ParameterError(
                f"channel {c} out of range for an image with {n_channels} channel(s)"
            )
        out.append(int(c) % n_channels)
    return tuple(out)


def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """Validate a ``(low, high)`` percentile pair with ``0 <= low < high <= 100``."""
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError) as exc:
        raise ParameterError(
            f"percentiles must be two numbers (low, high), got {percentiles!r}"
        ) from exc
    if not (0.0 <= lo < hi <= 100.0):
        raise ParameterError(
            f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}"
        )
    return lo, hi


def channel_limits(channel: np.ndarray, percentiles: Sequence[float]) -> tuple[float, float]:
    """Return the intensity values at the given percentiles of one channel's finite pixels.

    NaN and +-inf are ignored; a channel without finite pixels gives ``(0.0, 0.0)``. The
    limits are finite for any finite values, those near the dtype's largest included.
    """
    lo, hi = check_percentiles(percentiles)
    values = channel[np.isfinite(channel)] if channel.dtype.kind == "f" else channel.ravel()
    if values.size == 0:
        return 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        limits = np.percentile(values, [lo, hi])
        if not np.all(np.isfinite(limits)):
            # Interpolating between two neighbours overflowed (values near the dtype's
            # largest, e.g. -3e38 and 3e38 in float32): halving every value is exact.
            limits = np.percentile(values * 0.5, [lo, hi]).astype(np.float64) * 2.0
    return float(limits[0]), float(limits[1])


def scale_to_uint8(channel: np.ndarray, vmin: float, vmax: float, gamma: float = 1.0) -> np.ndarray:
    """Map ``[vmin, vmax]`` linearly to ``[0, 255]`` (clipped), then apply ``gamma``.

    ``out = 255 * ((x - vmin) / (vmax - vmin)) ** gamma``; gamma < 1 brightens faint
    structures. NaN maps to 0, +inf to 255 and -inf to 0. When ``vmax <= vmin`` (a flat
    channel) pixels above ``vmin`` become 255 and the rest 0.

    Dtypes of at most 16 bits are scaled in float32, which holds their values and
    differences exactly; wider ones (float32, float64, 32/64-bit integers) in float64, so
    that values of any magnitude (1e300 included) keep their contrast.
    """
    work = np.float32 if channel.dtype.itemsize <= 2 else np.float64
    low, high = work(vmin), work(vmax)
    if high > low:
        scaled = channel.astype(work)  # one working copy, scaled in place
        with np.errstate(over="ignore", invalid="ignore"):
            if not np.isfinite(high - low):
                # float64 data spanning most of +-1.8e308: halving every value is exact.
                scaled *= 0.5
                low, high = low * work(0.5), high * work(0.5)
            scaled -= low
            scaled /= high - low
    else:
        scaled = (channel > low).astype(work)
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(scaled, 0.0, 1.0, out=scaled)
    if gamma != 1.0:
        np.power(scaled, work(gamma), out=scaled)
    return np.rint(scaled * 255.0).astype(np.uint8)


def conversion_bytes(image: MicroscopyImage, *, plane: int | str = 0) -> int:
    """Estimated peak working memory of :func:`to_rgb8` on ``image``, in bytes.

    :data:`CONVERSION_BYTES_PER_PIXEL` (:data:`WIDE_CONVERSION_BYTES_PER_PIXEL` for data
    wider than 16 bits) per pixel of the (H, W) plane, plus the maximum
    projection's ``(H, W, C)`` array in the image's dtype for ``plane="max"`` on a stack.
    """
    pixels = image.height * image.width
    wide = image.dtype.itemsize > 2
    need = pixels * (WIDE_CONVERSION_BYTES_PER_PIXEL if wide else CONVERSION_BYTES_PER_PIXEL)
    if isinstance(plane, str) and image.n_planes > 1:
        need += pixels * image.n_channels * image.dtype.itemsize
    return int(need)


def check_conversion_size(
    image: MicroscopyImage, *, plane: int | str = 0, max_bytes: int = MAX_CONVERSION_BYTES
) -> None:
    """Raise :class:`~samlib.errors.ImageTooLargeError` when converting ``image`` would need
    more than ``max_bytes`` of working memory (:func:`conversion_bytes`)."""
    need = conversion_bytes(image, plane=plane)
    if need > max_bytes:
        raise ImageTooLargeError(
            f"{image.name}: converting its {image.width} x {image.height} px "
            f"{image.dtype} plane to RGB needs about {need / 2**30:.1f} GiB of memory, over "
            f"the limit of {max_bytes / 2**30:.1f} GiB; crop or downsample the image"
        )


def to_rgb8(
    image: MicroscopyImage | np.ndarray,
    *,
    channels: ChannelChoice | Sequence[ChannelChoice] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    gamma: float = 1.0,
    plane: int | str = 0,
    max_bytes: int = MAX_CONVERSION_BYTES,
) -> np.ndarray:
    """Convert an image to HWC uint8 RGB for SAM, normalising each channel separately.

    Parameters
    ----------
    image : MicroscopyImage or ndarray
        An image from :func:`samlib.image.io.read_image`, or an array (2-D YX, or a layout that
        :func:`samlib.image.microscopy.guess_axes` recognises, e.g. HWC RGB).
    channels : None, int, or 3 entries of int / None
        Source channel for the R, G and B outputs (``None`` entries stay black). ``None``
        uses :func:`default_channels` (grey for one channel, first three otherwise); one
        integer shows that channel in grey.
    percentiles : (low, high)
        Percentiles of each source channel (finite pixels only) mapped to 0 and 255.
        ``(0, 100)`` is plain min-max scaling. NaN pixels show as 0, +inf as 255 and
        -inf as 0; they never move the limits.
    gamma : float
        Exponent applied after scaling, within ``GAMMA_RANGE``; < 1 brightens.
    plane : int or "max"
        Plane to show, or the maximum projection over all planes.
    max_bytes : int
        Refuse, before converting, an image whose conversion would need more working
        memory than this (:func:`conversion_bytes`; default :data:`MAX_CONVERSION_BYTES`).

    Returns
    -------
    ndarray, shape (H, W, 3), uint8
        C-contiguous RGB image.

    Raises
    ------
    ImageTooLargeError
        The conversion would need more than ``max_bytes``.
    """
    img = image if isinstance(image, MicroscopyImage) else as_image(image)
    chosen = _check_channels(channels, img.n_channels)
    check_percentiles(percentiles)
    if isinstance(gamma, bool) or not isinstance(gamma, int | float | np.floating | np.integer):
        raise ParameterError(f"gamma must be a number, got {gamma!r}")
    if not (np.isfinite(gamma) and GAMMA_RANGE[0] <= gamma <= GAMMA_RANGE[1]):
        raise ParameterError(f"gamma must be within {GAMMA_RANGE}, got {gamma!r}")
    check_conversion_size(img, plane=plane, max_bytes=max_bytes)
    data = img.plane(plane)
    out = np.zeros((img.height, img.width, 3), dtype=np.uint8)
    done: dict[int, np.ndarray] = {}
    for k, c in enumerate(chosen):
        if c is None:
            continue
        if c not in done:
            vmin, vmax = channel_limits(data[..., c], percentiles)
            done[c] = scale_to_uint8(data[..., c], vmin, vmax, float(gamma))
        out[..., k] = done[c]
    return out


def check_rgb8(rgb8: object) -> np.ndarray:
    """Return ``rgb8`` if it is what SAM takes, an ``(H, W, 3)`` uint8 array; else raise
    :class:`~samlib.errors.ImageError` naming what it is instead."""
    if not isinstance(rgb8, np.ndarray):
        raise ImageError(f"expected a NumPy HWC uint8 RGB array, got {type(rgb8).__name__}")
    if rgb8.dtype != np.uint8 or rgb8.ndim != 3 or rgb8.shape[2] != 3:
        raise ImageError(
            f"expected an HWC uint8 RGB array, got shape {rgb8.shape} dtype {rgb8.dtype}; "
            "convert it with samlib.to_rgb8 first"
        )
    if rgb8.shape[0] == 0 or rgb8.shape[1] == 0:
        raise ImageError(f"the image has an empty axis: shape {rgb8.shape}")
    return rgb8


#: Plane choice for the maximum intensity projection.
MAX_PROJECTION = "max"


@dataclass(frozen=True)
class DisplaySettings:
    """How an image is turned into RGB for SAM (see :func:`to_rgb8`).

    Attributes
    ----------
    channels : (R, G, B) source channel index or None (black)
    percentiles : (low, high) in percent
    gamma : float
    plane : int or "max"
    """

    channels: tuple[int | None, int | None, int | None] = (0, 0, 0)
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    gamma: float = 1.0
    plane: int | str = 0

    @classmethod
    def default_for(cls, image: MicroscopyImage) -> DisplaySettings:
        """The default settings for an image: its first plane, default channel mapping."""
        return cls(channels=default_channels(image.n_channels))

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form, used in cache keys and recipes."""
        return json.loads(json.dumps(asdict(self)))

    def render(self, image: MicroscopyImage) -> np.ndarray:
        """``image`` as the ``(H, W, 3)`` uint8 RGB that SAM sees (:func:`to_rgb8`)."""
        return to_rgb8(
            image,
            channels=self.channels,
            percentiles=self.percentiles,
            gamma=self.gamma,
            plane=self.plane,
        )
