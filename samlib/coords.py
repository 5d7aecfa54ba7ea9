"""Every coordinate conversion in samlib lives here.

Conventions: points are ``(x, y)`` = (column, row) in image pixels, as SAM takes them;
boxes are XYXY (SAM prompts) or XYWH (records, COCO). NumPy indexing is ``[row, col]``,
so the flip between the two happens only in this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """Convert an ``[x, y, w, h]`` box to ``[x0, y0, x1, y1]``."""
    x, y, w, h = box
    return [x, y, x + w, y + h]


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    """Convert an ``[x0, y0, x1, y1]`` box to ``[x, y, w, h]``."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]


def xy_to_rowcol(x: float, y: float) -> tuple[int, int]:
    """Return the ``(row, col)`` array index of the pixel that contains point ``(x, y)``."""
    return int(np.floor(y)), int(np.floor(x))


def rowcol_to_xy(row: float, col: float) -> tuple[float, float]:
    """Return the ``(x, y)`` point at the centre of pixel ``(row, col)``."""
    return float(col) + 0.5, float(row) + 0.5


def canvas_to_image(
    x: float,
    y: float,
    canvas_size: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[float, float]:
    """Map a point drawn on a scaled canvas to image pixel coordinates.

    Parameters
    ----------
    x, y : float
        Point on the canvas, in canvas pixels (origin top-left).
    canvas_size : (width, height)
        Size at which the image is displayed on the canvas.
    image_size : (width, height)
        Size of the image in pixels.

    Returns
    -------
    (x, y) in image pixels, clipped to the image.
    """
    cw, ch = canvas_size
    iw, ih = image_size
    if cw <= 0 or ch <= 0 or iw <= 0 or ih <= 0:
        raise ValueError(f"sizes must be positive, got canvas {canvas_size} image {image_size}")
    xi = min(max(x * iw / cw, 0.0), float(iw))
    yi = min(max(y * ih / ch, 0.0), float(ih))
    return xi, yi


def canvas_box_to_image(
    left: float,
    top: float,
    width: float,
    height: float,
    canvas_size: tuple[int, int],
    image_size: tuple[int, int],
) -> list[float]:
    """Map a rectangle drawn on the canvas (left, top, width, height) to an image XYXY box.

    Negative widths/heights (a box dragged up or left) are normalised.
    """
    x0, y0 = canvas_to_image(left, top, canvas_size, image_size)
    x1, y1 = canvas_to_image(left + width, top + height, canvas_size, image_size)
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def display_size(image_size: tuple[int, int], max_width: int) -> tuple[int, int]:
    """Return the ``(width, height)`` at which to show an image no wider than ``max_width``."""
    iw, ih = image_size
    scale = min(1.0, max_width / iw)
    return max(1, round(iw * scale)), max(1, round(ih * scale))


def fit_width(image_size: tuple[int, int], width: int) -> tuple[int, int]:
    """Return the ``(width, height)`` at which to show an image exactly ``width`` pixels wide.

    Unlike :func:`display_size`, small images are enlarged too (a canvas on a projector).
    """
    iw, ih = image_size
    if iw <= 0 or ih <= 0 or width <= 0:
        raise ValueError(f"sizes must be positive, got image {image_size} width {width}")
    return int(width), max(1, round(ih * width / iw))


def centroid_rowcol_to_xy(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert centroids given as array ``(row, col)`` indices to ``(x, y)`` point arrays.

    Same convention as :func:`rowcol_to_xy` (and ImageJ): a pixel's centre is at +0.5.
    """
    return np.asarray(cols, dtype=float) + 0.5, np.asarray(rows, dtype=float) + 0.5


def rowcol_bbox_to_xywh(
    min_row: np.ndarray, min_col: np.ndarray, max_row: np.ndarray, max_col: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Convert half-open ``(min_row, min_col, max_row, max_col)`` boxes (scikit-image
    ``regionprops`` order) to ``(x, y, w, h)`` arrays, the records' XYWH convention."""
    min_row, min_col = np.asarray(min_row), np.asarray(min_col)
    return min_col, min_row, np.asarray(max_col) - min_col, np.asarray(max_row) - min_row


def contour_rowcol_to_xy(contour: np.ndarray) -> np.ndarray:
    """Convert an ``(N, 2)`` ``(row, col)`` contour (``skimage.measure.find_contours``) to
    ``(N, 2)`` ``(x, y)`` points with pixel centres at +0.5 (ImageJ's convention)."""
    contour = np.asarray(contour, dtype=float)
    return contour[:, ::-1] + 0.5
