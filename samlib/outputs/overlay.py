"""Draw masks, outlines, boxes and prompts on an RGB image; crop instances for a gallery.

Every function takes an ``(H, W, 3)`` uint8 RGB image and returns a new one (the input is
never modified). Masks come as mask records (bool or RLE segmentation), bool arrays or an
``(N, H, W)`` stack. Points are ``(x, y)`` image pixels, boxes XYXY (prompts) or the records'
XYWH ``bbox``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from skimage.draw import disk
from skimage.morphology import binary_dilation
from skimage.morphology import disk as disk_footprint
from skimage.segmentation import find_boundaries

from samlib import coords
from samlib.errors import ParameterError
from samlib.records.build import mask_box
from samlib.records.masks import bbox_slices, labels_from_masks, masks_of

FOREGROUND = (0, 220, 0)
BACKGROUND = (230, 30, 30)
BOX_COLOR = (255, 200, 0)
GRID_COLOR = (0, 200, 255)
OUTLINE_COLOR = (255, 255, 0)
TILE_COLOR = (255, 80, 200)

MaskInput = Sequence[Mapping[str, Any]] | Sequence[np.ndarray] | np.ndarray


def _check_rgb(rgb8: np.ndarray) -> np.ndarray:
    rgb8 = np.asarray(rgb8)
    if rgb8.ndim != 3 or rgb8.shape[2] != 3 or rgb8.dtype != np.uint8:
        raise ParameterError(f"expected an (H, W, 3) uint8 image, got {rgb8.dtype} {rgb8.shape}")
    return rgb8


def palette(n: int, seed: int = 0) -> np.ndarray:
    """Return ``n`` distinct saturated colours as an ``(n, 3)`` uint8 array (golden-angle hues)."""
    hues = (np.arange(n) * 0.618033988749895 + 0.1 + 0.37 * seed) % 1.0
    h6 = hues * 6
    k = np.stack([(5 + h6) % 6, (3 + h6) % 6, (1 + h6) % 6], axis=1)
    rgb = 1 - np.clip(np.minimum(k, 4 - k), 0, 1) * 0.85  # HSV with V=1, S=0.85
    return np.rint(rgb * 255).astype(np.uint8)


def _masks(rgb8: np.ndarray, masks: MaskInput) -> list[np.ndarray]:
    out = masks_of(masks)
    if out and out[0].shape != rgb8.shape[:2]:
        raise ParameterError(f"masks are {out[0].shape} but the image is {rgb8.shape[:2]}")
    return out


def color_masks(
    rgb8: np.ndarray,
    masks: MaskInput,
    *,
    alpha: float = 0.45,
    colors: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Blend each mask in its own colour over the image (larger masks under smaller ones).

    Parameters
    ----------
    alpha : float
        Opacity of the colour, 0..1.
    colors : (N, 3) uint8, optional
        One colour per mask; default :func:`palette`.
    """
    rgb8 = _check_rgb(rgb8)
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha must be within [0, 1], got {alpha}")
    ms = _masks(rgb8, masks)
    if not ms:
        return rgb8.copy()
    lut = np.zeros((len(ms) + 1, 3), np.float32)
    lut[1:] = palette(len(ms), seed) if colors is None else np.asarray(colors, np.float32)
    labels = labels_from_masks(ms)
    inside = labels > 0
    out = rgb8.astype(np.float32)
    out[inside] = (1 - alpha) * out[inside] + alpha * lut[labels[inside]]
    return np.rint(out).astype(np.uint8)


def draw_outlines(
    rgb8: np.ndarray,
    masks: MaskInput,
    *,
    color: Sequence[int] | None = OUTLINE_COLOR,
    thickness: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Draw each mask's inner boundary; ``color=None`` uses the mask colours of :func:`palette`."""
    rgb8 = _check_rgb(rgb8)
    if not 1 <= thickness <= 20:
        raise ParameterError(f"thickness must be 1..20 pixels, got {thickness}")
    ms = _masks(rgb8, masks)
    out = rgb8.copy()
    colors = palette(len(ms), seed)
    for i, m in enumerate(ms):
        # Work on the mask's box (1 px margin) only: cost follows object size, not image size.
        sl = bbox_slices(m, pad=1)
        if sl is None:
            continue
        sub = m[sl]
        edge = find_boundaries(sub, mode="inner")
        if thickness > 1:
            edge = binary_dilation(edge, disk_footprint(thickness // 2)) & sub
        out[sl][edge] = colors[i] if color is None else color
    return out


def draw_boxes(
    rgb8: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    *,
    xywh: bool = False,
    color: Sequence[int] = BOX_COLOR,
    thickness: int = 1,
) -> np.ndarray:
    """Draw rectangle outlines; boxes are XYXY image pixels, or XYWH with ``xywh=True``."""
    rgb8 = _check_rgb(rgb8)
    out = rgb8.copy()
    h, w = rgb8.shape[:2]
    t = int(thickness)
    if not 1 <= t <= 20:
        raise ParameterError(f"thickness must be 1..20 pixels, got {thickness}")
    for box in np.asarray(boxes, dtype=float).reshape(-1, 4):
        x0, y0, x1, y1 = coords.xywh_to_xyxy(box) if xywh else box
        r0, c0 = coords.xy_to_rowcol(min(x0, x1), min(y0, y1))
        r1, c1 = coords.xy_to_rowcol(max(x0, x1), max(y0, y1))
        r0, r1 = max(r0, 0), min(r1, h - 1)
        c0, c1 = max(c0, 0), min(c1, w - 1)
        if r0 > r1 or c0 > c1:
            continue  # entirely outside the image
        out[r0 : min(r0 + t, r1 + 1), c0 : c1 + 1] = color  # top
        out[max(r1 - t + 1, r0) : r1 + 1, c0 : c1 + 1] = color  # bottom
        out[r0 : r1 + 1, c0 : min(c0 + t, c1 + 1)] = color  # left
        out[r0 : r1 + 1, max(c1 - t + 1, c0) : c1 + 1] = color  # right
    return out


def draw_points(
    rgb8: np.ndarray,
    points_xy: np.ndarray | Sequence[Sequence[float]],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    radius: int | None = None,
    colors: tuple[Sequence[int], Sequence[int]] = (BACKGROUND, FOREGROUND),
) -> np.ndarray:
    """Draw point markers: filled disks with a dark rim, coloured by label (1 fg, 0 bg).

    ``radius`` defaults to about 1 % of the image size (at least 2 pixels).
    """
    rgb8 = _check_rgb(rgb8)
    pts = np.asarray(points_xy, dtype=float).reshape(-1, 2)
    labs = np.ones(len(pts), int) if labels is None else np.asarray(labels).reshape(-1)
    if len(labs) != len(pts):
        raise ParameterError(f"{len(labs)} labels for {len(pts)} points")
    h, w = rgb8.shape[:2]
    rad = max(2, round(0.01 * max(h, w))) if radius is None else int(radius)
    out = rgb8.copy()
    for (x, y), lab in zip(pts, labs, strict=True):
        r, c = coords.xy_to_rowcol(x, y)
        out[disk((r, c), rad + 1, shape=(h, w))] = (0, 0, 0)
        out[disk((r, c), rad, shape=(h, w))] = colors[1] if lab == 1 else colors[0]
    return out


def draw_prompts(
    rgb8: np.ndarray,
    points_xy: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    boxes_xyxy: np.ndarray | None = None,
) -> np.ndarray:
    """Draw prompt boxes (XYXY) and foreground/background points on the image."""
    out = _check_rgb(rgb8)
    if boxes_xyxy is not None and len(boxes_xyxy):
        out = draw_boxes(out, boxes_xyxy, thickness=2)
    if points_xy is not None and len(points_xy):
        out = draw_points(out, points_xy, labels)
    return out if out is not rgb8 else rgb8.copy()


def render(
    rgb8: np.ndarray,
    records: MaskInput,
    *,
    masks: bool = True,
    outlines: bool = True,
    boxes: bool = False,
    points: np.ndarray | None = None,
    tiles: Sequence[Sequence[int]] = (),
    alpha: float = 0.45,
) -> np.ndarray:
    """Compose the usual layers: coloured masks, outlines, record ``bbox`` (XYWH), grid
    points (``(N, 2)`` ``(x, y)`` pixels, e.g. the points SAM was prompted with) and the
    tile grid (``tiles``: XYXY end-exclusive boxes, e.g. the cores of a tiled run)."""
    out = _check_rgb(rgb8)
    ms = _masks(out, records)
    if masks and ms:
        out = color_masks(out, ms, alpha=alpha)
    if outlines and ms:
        out = draw_outlines(out, ms, color=None if not masks else OUTLINE_COLOR)
    if boxes and ms:
        if all(isinstance(r, Mapping) and "bbox" in r for r in records):
            bxs = np.array([r["bbox"] for r in records], float)
        else:
            bxs = np.array([coords.xyxy_to_xywh(mask_box(m)) for m in ms], float)
        out = draw_boxes(out, bxs, xywh=True)
    if points is not None and len(points):
        out = draw_points(
            out,
            points,
            radius=max(1, round(0.004 * max(out.shape[:2]))),
            colors=(GRID_COLOR, GRID_COLOR),
        )
    if len(tiles):
        last = np.asarray(tiles, dtype=float).reshape(-1, 4) - [0, 0, 1, 1]
        out = draw_boxes(
            out, last, color=TILE_COLOR, thickness=max(1, round(0.002 * max(out.shape[:2])))
        )
    return out if out is not rgb8 else rgb8.copy()


def instance_crops(
    rgb8: np.ndarray,
    records: MaskInput,
    *,
    pad: int = 4,
    dim: float = 0.35,
    outline: bool = True,
) -> list[np.ndarray]:
    """Crop each mask's bounding box (plus ``pad`` pixels) for a gallery (workshop 3.3).

    Pixels outside the mask are darkened to ``dim`` of their brightness and the mask is
    outlined, so each crop shows exactly which object it is. Empty masks give a 1x1 black
    crop.
    """
    rgb8 = _check_rgb(rgb8)
    if pad < 0 or not 0.0 <= dim <= 1.0:
        raise ParameterError(f"pad must be >= 0 and dim in [0, 1], got pad={pad}, dim={dim}")
    crops = []
    for m in _masks(rgb8, records):
        window = bbox_slices(m, pad=pad)
        if window is None:
            crops.append(np.zeros((1, 1, 3), np.uint8))
            continue
        crop = rgb8[window].astype(np.float32)
        inside = m[window]
        crop[~inside] *= dim
        crop = np.rint(crop).astype(np.uint8)
        if outline:
            crop[find_boundaries(inside, mode="inner")] = OUTLINE_COLOR
        crops.append(crop)
    return crops
