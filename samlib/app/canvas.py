"""Prompts drawn on a drawing canvas (Fabric.js JSON) or typed, turned into SAM prompts.

``streamlit-drawable-canvas`` returns the drawing as Fabric.js JSON: a point is a
``Circle`` whose position is given by its origin corner, a box is a ``Rect`` whose
``width``/``height`` are scaled by ``scaleX``/``scaleY``. This module finds the
point centres and box corners in canvas pixels and hands the conversion to image
pixels to :mod:`samlib.coords` (the only place that converts coordinates).
No UI code here: the Streamlit page passes the JSON in and gets arrays out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from samlib import coords
from samlib.errors import PromptError
from samlib.prompts.objects import PromptSet

#: Stroke colours the UI uses for the three tools; the label is read back from them.
FOREGROUND_COLOR = "#00e000"
BACKGROUND_COLOR = "#ff2020"
BOX_COLOR = "#00b4ff"

# Where Fabric's ``left``/``top`` sit on the object, as a fraction of its size.
_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _scaled_size(obj: Mapping[str, Any]) -> tuple[float, float]:
    """Return the drawn (width, height) of a Fabric object in canvas pixels, stroke included."""
    stroke = float(obj.get("strokeWidth", 0) or 0)
    sx, sy = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
    w = float(obj.get("width", 0)) * sx
    h = float(obj.get("height", 0)) * sy
    if obj.get("strokeUniform"):
        return w + stroke, h + stroke
    return w + stroke * sx, h + stroke * sy


def _center(obj: Mapping[str, Any]) -> tuple[float, float]:
    """Return the centre of a Fabric object in canvas pixels, whatever its origin."""
    w, h = _scaled_size(obj)
    ox = _ORIGIN.get(str(obj.get("originX", "left")), 0.0)
    oy = _ORIGIN.get(str(obj.get("originY", "top")), 0.0)
    return float(obj.get("left", 0)) + (0.5 - ox) * w, float(obj.get("top", 0)) + (0.5 - oy) * h


def _rect(obj: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """Return (left, top, width, height) of the area a Fabric rectangle encloses, canvas px.

    The drawing tool puts the outer top-left corner (stroke included) at the drag start
    and sets ``width``/``height`` to the drag distance, so the box is the drag extent:
    ``width * scaleX`` by ``height * scaleY`` from that corner.
    """
    sx, sy = float(obj.get("scaleX", 1) or 1), float(obj.get("scaleY", 1) or 1)
    outer_w, outer_h = _scaled_size(obj)
    ox = _ORIGIN.get(str(obj.get("originX", "left")), 0.0)
    oy = _ORIGIN.get(str(obj.get("originY", "top")), 0.0)
    left = float(obj.get("left", 0)) - ox * outer_w
    top = float(obj.get("top", 0)) - oy * outer_h
    return left, top, float(obj.get("width", 0)) * sx, float(obj.get("height", 0)) * sy


def prompts_from_canvas(
    drawing: Mapping[str, Any] | None,
    canvas_size: tuple[int, int],
    image_size: tuple[int, int],
) -> PromptSet:
    """Turn a canvas drawing into point and box prompts in image pixels.

    Parameters
    ----------
    drawing : dict or None
        Fabric.js JSON (``CanvasResult.json_data``) with an ``objects`` list. Circles are
        points; their stroke colour says foreground (:data:`FOREGROUND_COLOR`) or
        background (:data:`BACKGROUND_COLOR`). Rectangles are boxes. Other shapes are ignored.
    canvas_size, image_size : (width, height)
        Displayed canvas size and image size, in pixels.

    Returns
    -------
    PromptSet
        Points as (x, y) and boxes as XYXY, in image pixels.
    """
    points, labels, boxes = [], [], []
    for obj in (drawing or {}).get("objects", []) or []:
        kind = str(obj.get("type", "")).lower()
        if kind == "circle":
            cx, cy = _center(obj)
            points.append(coords.canvas_to_image(cx, cy, canvas_size, image_size))
            stroke = str(obj.get("stroke", "")).lower()
            labels.append(0 if stroke == BACKGROUND_COLOR else 1)
        elif kind in ("rect", "labeledrect"):
            left, top, w, h = _rect(obj)
            box = coords.canvas_box_to_image(left, top, w, h, canvas_size, image_size)
            if box[2] - box[0] >= 1 and box[3] - box[1] >= 1:
                boxes.append(box)
    return PromptSet(
        points=np.asarray(points, dtype=float).reshape(-1, 2),
        labels=np.asarray(labels, dtype=int),
        boxes=np.asarray(boxes, dtype=float).reshape(-1, 4),
    )


def merge_prompts(a: PromptSet, b: PromptSet) -> PromptSet:
    """Concatenate two prompt sets (e.g. canvas clicks and typed-in coordinates)."""
    return PromptSet(
        points=np.concatenate([a.points, b.points]),
        labels=np.concatenate([a.labels, b.labels]).astype(int),
        boxes=np.concatenate([a.boxes, b.boxes]),
    )


def typed_box(text: str) -> PromptSet:
    """A box typed as ``"x0, y0, x1, y1"`` (image pixels, XYXY; commas or semicolons).

    Raises :class:`~samlib.errors.PromptError` unless the text is four finite numbers with
    ``x0 <= x1`` and ``y0 <= y1``.
    """
    try:
        values = [float(v) for v in str(text).replace(";", ",").split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise PromptError(
            f"A box is four numbers x0, y0, x1, y1, none NaN or infinite; got {text!r}."
        )
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        raise PromptError(f"A box needs x0 <= x1 and y0 <= y1; got {text!r}.")
    return PromptSet(boxes=np.array([values], dtype=float))
