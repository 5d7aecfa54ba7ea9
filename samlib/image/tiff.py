"""TIFF reading for :mod:`samlib.image.io` (tifffile): axes, pixel size, size guard, errors."""

from __future__ import annotations

import logging
import re
import warnings
from typing import IO

import numpy as np
import tifffile

from samlib.errors import (
    CorruptImageError,
    ImageTooLargeError,
    ImageWarning,
    ParameterError,
    SamlibError,
    UnsupportedImageError,
)
from samlib.image.microscopy import check_size, guess_axes

#: Most pages (IFDs) a TIFF may have. Every page costs a parse however few pixels it holds,
#: and grouping pages into series grows with the square of their number
#: (benchmarks/README.md, "TIFF pages"); 4,096 pages of 256 x 256 reach the pixel limit.
MAX_TIFF_PAGES = 4096

#: tifffile's letters for axes it could not name; we guess these from the shape.
_UNKNOWN_AXES = frozenset("QI")
_MICRON_UNITS = {
    "micron",
    "microns",
    "um",
    "\u00b5m",
    "\u03bcm",
    "\\u00B5m",  # ImageJ sometimes stores the escape sequence itself
    "\\u00b5m",
    "micrometer",
    "micrometre",
}
_OME_SIZE = re.compile(r'PhysicalSizeX="([0-9.eE+-]+)"')
_OME_UNIT = re.compile(r'PhysicalSizeXUnit="([^"]+)"')


class _Capture(logging.Handler):
    """Collects tifffile's log records: it logs (instead of raising) on damaged strips."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _axes(series_axes: str, shape: tuple[int, ...]) -> str:
    if not set(series_axes) & _UNKNOWN_AXES:
        return series_axes
    if series_axes.endswith("YXS") and not set(series_axes[:-3]) - _UNKNOWN_AXES:
        # RGB(A) samples are certain; unnamed leading axes are planes.
        return "Q" * (len(series_axes) - 3) + "YXS"
    return guess_axes(shape)


def _pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    """Pixel size in µm/px from ImageJ, OME or centimetre resolution tags, else None."""
    try:
        if tif.is_ome and tif.ome_metadata:
            size = _OME_SIZE.search(tif.ome_metadata)
            unit = _OME_UNIT.search(tif.ome_metadata)
            if size and (unit is None or unit.group(1) in _MICRON_UNITS):
                value = float(size.group(1))
                return value if value > 0 else None
        page = tif.pages.first
        tag = page.tags.get("XResolution")
        if tag is None:
            return None
        num, den = tag.value
        if not num or not den or num == den:  # 1/1 is the "unset" default
            return None
        px_per_unit = num / den
        unit_tag = page.tags.get("ResolutionUnit")
        unit = int(unit_tag.value) if unit_tag is not None else 1
        ij_unit = str((tif.imagej_metadata or {}).get("unit", "")).strip()
        if ij_unit in _MICRON_UNITS:
            return 1.0 / px_per_unit
        if unit == 3:  # centimetre
            return 1e4 / px_per_unit
    except (KeyError, ValueError, TypeError, ZeroDivisionError, AttributeError):
        return None
    return None


def _check_pages(tif: tifffile.TiffFile, label: str) -> None:
    """Refuse a TIFF with more than :data:`MAX_TIFF_PAGES` pages.

    Walks the chain of page offsets no further than the first page past the limit, and
    decodes no pixels.
    """
    limit = MAX_TIFF_PAGES
    try:
        tif.pages.get(limit)  # the page after the limit (0-based): IndexError if absent
    except IndexError:
        return
    raise ImageTooLargeError(
        f"{label}: the TIFF has more than {limit:,} pages, the most samlib reads; "
        "save fewer planes per file"
    )


def read_tiff(stream: IO[bytes], label: str, max_pixels: int, series: int | None = None):
    """Read one image series of a TIFF; return ``(array, axes, pixel_size_um, metadata)``.

    ``series`` picks the series (tifffile's order); ``None`` reads the first and warns with
    :class:`~samlib.errors.ImageWarning` when the file holds others.
    """
    capture = _Capture()
    logger = logging.getLogger("tifffile")
    logger.addHandler(capture)
    try:
        with tifffile.TiffFile(stream) as tif:
            _check_pages(tif, label)
            n_series = len(tif.series)
            if not n_series:
                raise CorruptImageError(f"{label}: the TIFF contains no image data")
            index = 0 if series is None else series
            if not 0 <= index < n_series:
                raise ParameterError(
                    f"{label}: series {index} does not exist, the TIFF holds {n_series} "
                    f"(0 to {n_series - 1})"
                )
            chosen = tif.series[index]
            shape = tuple(int(s) for s in chosen.shape)
            dtype = np.dtype(chosen.dtype)
            if dtype.kind not in "uifb":
                raise UnsupportedImageError(f"{label}: unsupported TIFF pixel type {dtype}")
            check_size(shape, label, max_pixels)
            array = chosen.asarray(maxworkers=1)
            axes = _axes(chosen.axes, shape)
            pixel_size = _pixel_size_um(tif)
            meta = {"tiff_axes": chosen.axes, "n_series": n_series, "series": index}
    except SamlibError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError(f"{label}: not enough memory to decode the TIFF") from exc
    except Exception as exc:
        # Damaged files surface as many types (TiffFileError, struct.error, zlib.error,
        # imagecodecs errors, ValueError, ...); all mean the same thing to the user.
        raise CorruptImageError(f"{label}: cannot decode the TIFF ({exc})") from exc
    finally:
        logger.removeHandler(capture)
    damaged = [m for m in capture.messages if "error" in m.lower() or "truncat" in m.lower()]
    if damaged:
        raise CorruptImageError(f"{label}: the TIFF is damaged or truncated ({damaged[0]})")
    if array.shape != shape:
        raise CorruptImageError(f"{label}: decoded shape {array.shape} differs from header {shape}")
    if series is None and n_series > 1:
        warnings.warn(
            ImageWarning(
                f"{label}: the TIFF holds {n_series} image series; read the first "
                f"({'x'.join(map(str, shape))} {chosen.axes}) and dropped the other "
                f"{n_series - 1} (read_image(..., series=N) reads another)"
            ),
            stacklevel=3,
        )
    return array, axes, pixel_size, meta
