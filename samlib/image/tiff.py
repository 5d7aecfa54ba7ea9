"""TIFF reading for :mod:`samlib.image.io` (tifffile): axes, pixel size, size guard, errors."""

from __future__ import annotations

import logging
import re
from typing import IO

import numpy as np
import tifffile

from samlib.errors import (
    CorruptImageError,
    ImageTooLargeError,
    SamlibError,
    UnsupportedImageError,
)
from samlib.image.microscopy import check_size, guess_axes

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


def read_tiff(stream: IO[bytes], label: str, max_pixels: int):
    """Read the first series of a TIFF; return ``(array, axes, pixel_size_um, metadata)``."""
    capture = _Capture()
    logger = logging.getLogger("tifffile")
    logger.addHandler(capture)
    try:
        with tifffile.TiffFile(stream) as tif:
            if not tif.series:
                raise CorruptImageError(f"{label}: the TIFF contains no image data")
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            dtype = np.dtype(series.dtype)
            if dtype.kind not in "uifb":
                raise UnsupportedImageError(f"{label}: unsupported TIFF pixel type {dtype}")
            check_size(shape, label, max_pixels)
            array = series.asarray(maxworkers=1)
            axes = _axes(series.axes, shape)
            pixel_size = _pixel_size_um(tif)
            meta = {"tiff_axes": series.axes, "n_series": len(tif.series)}
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
    return array, axes, pixel_size, meta
