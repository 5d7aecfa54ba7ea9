"""Read microscopy images (PNG, JPEG, BMP, TIFF) from a path, bytes or an upload.

:func:`read_image` returns a :class:`~samlib.image.microscopy.MicroscopyImage` holding the original
pixel values in the layout ``(planes, Y, X, channels)``; :func:`~samlib.image.display.to_rgb8`
turns it into the HWC uint8 RGB that SAM takes. The format is detected from the file's
first bytes, never from its name.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from samlib.errors import (
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    ParameterError,
    UnsupportedImageError,
)
from samlib.image.microscopy import MicroscopyImage, as_image, check_size
from samlib.image.tiff import read_tiff

__all__ = ["DEFAULT_MAX_PIXELS", "read_image", "sniff_format"]

#: Largest number of array elements (planes x Y x X x channels) read by default: 2**28,
#: i.e. Pillow's own decompression-bomb limit for an RGB image (about 89 Mpx x 3).
DEFAULT_MAX_PIXELS = 2**28

_MAGIC = {
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"II+\x00": "TIFF",  # BigTIFF
    b"MM\x00+": "TIFF",
    b"\x89PNG": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
}

Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]


def sniff_format(head: bytes) -> str | None:
    """Return "TIFF", "PNG", "JPEG" or "BMP" from a file's first bytes, else None."""
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    return None


def _open_source(source: Source, name: str | None) -> tuple[IO[bytes], str, bool]:
    """Return (binary seekable stream, display name, whether we must close it)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"no such image file: {str(path)!r}")
        return path.open("rb"), name or path.name, True
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source)), name or "image", False
    if hasattr(source, "read"):
        label = name or os.path.basename(str(getattr(source, "name", "") or "")) or "upload"
        if hasattr(source, "seekable") and source.seekable():
            source.seek(0)
            return source, label, False
        return io.BytesIO(source.read()), label, False
    raise ParameterError(
        f"source must be a path, bytes or a binary file object, got {type(source)}"
    )


def read_image(
    source: Source,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    axes: str | None = None,
    series: int | None = None,
) -> MicroscopyImage:
    """Read a PNG, JPEG, BMP or TIFF image into the canonical ``(planes, Y, X, C)`` layout.

    Parameters
    ----------
    source : path, bytes or binary file object
        The image; file objects (e.g. Streamlit uploads) are read from the start.
    name : str, optional
        Display name; defaults to the file name.
    max_pixels : int
        Refuse images with more array elements (planes x Y x X x channels) than this,
        before decoding them (decompression-bomb guard).
    axes : str, optional
        Override the axis interpretation of a TIFF (one letter per stored axis, tifffile
        style, e.g. ``"ZCYX"``, ``"CYX"``, ``"YXC"``, ``"TYX"``). By default the file's
        metadata is used, and :func:`samlib.image.microscopy.guess_axes` where it has none.
    series : int, optional
        Which image series of a TIFF to read (tifffile's order, 0 = the first; e.g. the
        images of an OME-TIFF, or runs of pages of different shapes). By default the first,
        with an :class:`~samlib.errors.ImageWarning` naming how many others the file holds.

    Returns
    -------
    MicroscopyImage
        Original dtype and values. Palette, 1-bit and CMYK images become RGB/grey; the alpha
        channel of PNG/BMP is dropped.

    Raises
    ------
    CorruptImageError
        Empty, truncated or undecodable file; zero-size axes.
    UnsupportedImageError
        Not a PNG/JPEG/BMP/TIFF, or an unsupported pixel type.
    ImageTooLargeError
        More than ``max_pixels`` elements, or a TIFF with more than
        :data:`samlib.image.tiff.MAX_TIFF_PAGES` pages.
    """
    if (
        isinstance(max_pixels, bool)
        or not isinstance(max_pixels, int | np.integer)
        or max_pixels < 1
    ):
        raise ParameterError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if series is not None and (
        isinstance(series, bool) or not isinstance(series, int | np.integer) or series < 0
    ):
        raise ParameterError(f"series must be an integer >= 0, got {series!r}")
    series = None if series is None else int(series)
    stream, label, owned = _open_source(source, name)
    try:
        head = stream.read(8)
        stream.seek(0)
        if not head:
            raise CorruptImageError(f"{label}: the file is empty")
        fmt = sniff_format(head)
        if fmt is None:
            raise UnsupportedImageError(
                f"{label}: not a PNG, JPEG, BMP or TIFF file (starts with {head[:4]!r})"
            )
        if fmt == "TIFF":
            array, found_axes, pixel_size, meta = read_tiff(stream, label, max_pixels, series)
        else:
            for option, value in (("axes", axes), ("series", series)):
                if value is not None:
                    raise ParameterError(
                        f"{option} can only be given for TIFF files, {label} is {fmt}"
                    )
            array, found_axes, pixel_size, meta = _read_pillow(stream, label, max_pixels)
    finally:
        if owned:
            stream.close()
    return as_image(
        array,
        axes if axes is not None else found_axes,
        name=label,
        pixel_size_um=pixel_size,
        metadata={"format": fmt, **meta},
    )


def _read_png16_rgb(stream: IO[bytes], label: str, max_pixels: int):
    """16-bit RGB(A) PNG via OpenCV: Pillow would silently reduce it to 8 bits."""
    head = stream.read(33)
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    check_size((height, width, 3), label, max_pixels)
    stream.seek(0)
    array = cv2.imdecode(np.frombuffer(stream.read(), np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.ndim != 3:
        raise CorruptImageError(f"{label}: cannot decode the 16-bit PNG")
    rgb = np.ascontiguousarray(array[..., 2::-1])  # OpenCV gives BGR(A); alpha dropped
    return rgb, "YXC", None, {"mode": "RGB;16", "pillow_format": "PNG"}


def _png_is_16bit_color(stream: IO[bytes]) -> bool:
    head = stream.read(26)
    stream.seek(0)
    # IHDR: bit depth at byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA).
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _read_pillow(stream: IO[bytes], label: str, max_pixels: int):
    if _png_is_16bit_color(stream):
        return _read_png16_rgb(stream, label, max_pixels)

    try:
        with warnings.catch_warnings():
            # We apply our own limit below; Pillow's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as im:
                fmt = im.format
                mode = im.mode
                bands = len(im.getbands())
                check_size((im.height, im.width, bands), label, max_pixels)
                im.load()
                if mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
                elif mode == "1":
                    im = im.convert("L")
                elif mode == "CMYK":
                    im = im.convert("RGB")
                elif mode in ("I;16B", "I;16L", "I;16N"):
                    im = im.convert("I;16")
                array = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label}: {exc} Crop or downsample the image.") from exc
    except UnidentifiedImageError as exc:
        raise CorruptImageError(f"{label}: cannot decode the image ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated data as OSError ("image file is truncated").
        raise CorruptImageError(f"{label}: cannot decode the image ({exc})") from exc
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = array[..., :-1]  # drop alpha: transparency is not a measurement
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return array, ("YX" if array.ndim == 2 else "YXC"), None, {"mode": mode, "pillow_format": fmt}
