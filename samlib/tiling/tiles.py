"""Segment everything on images larger than the model's input, tile by tile with a halo.

SAM shrinks every image to its input size (1024 pixels on the long side for the official
models), so small objects in a large image get lost, and a full-resolution mask per
candidate of a large image does not fit in memory. As in micro-sam, the image is cut into
*cores* that partition it; each core grown by a *halo* on every side is a *window*, and the
everything-generator (:func:`samlib.everything.generate.segment_everything`) runs on each window.
Every window has the same size (windows at the image border are shifted inwards, not
clipped), so the model sees every tile at the same scale. Masks are kept cropped to their
boxes (:class:`samlib.tiling.stitch.Piece`), mapped to image coordinates and stitched
(:func:`samlib.tiling.stitch.stitch_pieces`): duplicates in the overlaps are removed, and an
object cut by a window's edge is taken from the tile that saw it whole, or merged from
the pieces when no tile did. Choose a halo larger than the objects' radius, so that
every object lies whole in at least one window.

With the default ``tile_size`` and ``halo`` a window is exactly the model's input size,
so the image is segmented at full resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from segment_anything.modeling import Sam

from samlib.errors import ParameterError
from samlib.everything.generate import segment_everything
from samlib.everything.params import GeneratorParams
from samlib.image.display import check_rgb8
from samlib.tiling.stitch import Piece, Tile, piece_record, pieces_from_records, stitch_pieces

__all__ = [
    "TILING_HELP",
    "Tile",
    "default_tiling",
    "segment_everything_tiled",
    "stitch_tiles",
    "tile_layout",
    "tile_pieces",
    "window_of",
]

TileProgress = Callable[[int, int], None]

TILING_HELP: dict[str, str] = {
    "tile_size": "Side of the image block each tile is responsible for, in pixels. With the "
    "default, each tile plus its halo is exactly the model's input size, so the image is "
    "segmented at full resolution.",
    "halo": "Context added around each tile, in pixels. Make it larger than your objects' "
    "radius, so that every object is seen whole by at least one tile.",
    "tile_iou_thresh": "Two masks from neighbouring tiles that overlap more than this (mask "
    "IoU, where both tiles saw the image) are the same object and are kept once.",
}


def default_tiling(model: Sam) -> tuple[int, int]:
    """``(tile_size, halo)`` whose windows are the model's input size (halo = 1/8 of it)."""
    size = int(model.image_encoder.img_size)
    halo = size // 8
    return size - 2 * halo, halo


def _spans(n: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """(core_start, core_end, window_start, window_end) along one axis of length n."""
    k = max(1, math.ceil(n / tile))
    edges = np.round(np.linspace(0, n, k + 1)).astype(int)
    win = min(n, tile + 2 * halo)
    out = []
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        s = max(0, min(a - halo, n - win))
        out.append((a, b, s, s + win))
    return out


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ParameterError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def tile_layout(image_size: tuple[int, int], tile_size: int, halo: int) -> list[Tile]:
    """Tiles covering an image: cores that partition it, windows = cores + halo.

    Parameters
    ----------
    image_size : tuple of int
        (H, W) of the image, pixels.
    tile_size : int
        Largest core side, pixels. The image is split into ``ceil(H / tile_size)`` x
        ``ceil(W / tile_size)`` cores of (nearly) equal size.
    halo : int
        Pixels added on every side of a core to make its window. Every window is
        ``tile_size + 2 * halo`` pixels (or the image side, if smaller); at the image
        border windows are shifted inwards rather than clipped.

    Returns
    -------
    list of Tile
        Row-major order. Boxes are XYXY, end exclusive, image frame.
    """
    h, w = (_check_int("image size", v, 1) for v in image_size)
    tile_size = _check_int("tile_size", tile_size, 1)
    halo = _check_int("halo", halo, 0)
    tiles = []
    for cy0, cy1, wy0, wy1 in _spans(h, tile_size, halo):
        for cx0, cx1, wx0, wx1 in _spans(w, tile_size, halo):
            tiles.append(Tile(window=(wx0, wy0, wx1, wy1), core=(cx0, cy0, cx1, cy1)))
    return tiles


def segment_everything_tiled(
    model: Sam,
    rgb8: np.ndarray,
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    tile_iou_thresh: float = 0.5,
    fast: bool = False,
    progress: TileProgress | None = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Masks of everything in a large image, segmented tile by tile and stitched.

    Parameters
    ----------
    model : Sam
        A ``segment_anything`` model in eval mode.
    rgb8 : numpy.ndarray
        (H, W, 3) uint8 RGB image, any size.
    tile_size : int, optional
        Largest core side in pixels (default: model input size minus twice the halo,
        768 for the official models).
    halo : int, optional
        Overlap added on each side of a core, pixels (default: 1/8 of the model input
        size, 128 for the official models). Should exceed the objects' radius.
    tile_iou_thresh : float
        Mask IoU, inside the pixels two windows share, above which masks from the two
        tiles are the same object.
    fast : bool
        Use the generator's fast (approximate) mode in each tile.
    progress : callable, optional
        ``progress(done, total)`` in tiles, after each tile.
    **params
        Any ``SamAutomaticMaskGenerator`` parameter, applied in every tile. Note
        ``output_mode`` defaults to ``"coco_rle"`` here, not ``"binary_mask"``: a
        full-size boolean mask per object of a large image can exceed memory.

    Returns
    -------
    list of dict
        The workshop's seven-key records in image coordinates: ``segmentation`` (in
        ``output_mode``, image size), ``area``, ``bbox`` (XYWH), ``predicted_iou``,
        ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box`` (XYWH, the window
        the mask was found in; for a mask merged from several windows, their hull).
        In tile order, and the generator's order within a tile: for an image that fits
        in one window, exactly :func:`samlib.everything.generate.segment_everything`'s records.
    """
    rgb8 = check_rgb8(rgb8)
    output_mode = params.pop("output_mode", "coco_rle")
    GeneratorParams.from_kwargs(output_mode=output_mode, **params)  # fail before any work
    if (
        isinstance(tile_iou_thresh, bool)
        or not isinstance(tile_iou_thresh, (int, float, np.floating, np.integer))
        or not 0.0 <= float(tile_iou_thresh) <= 1.0
    ):
        raise ParameterError(f"tile_iou_thresh must be in [0, 1], got {tile_iou_thresh!r}")
    d_tile, d_halo = default_tiling(model)
    tile_size = d_tile if tile_size is None else tile_size
    halo = d_halo if halo is None else halo
    size = rgb8.shape[:2]
    tiles = tile_layout(size, tile_size, halo)
    per_tile = []
    for t, tile in enumerate(tiles):
        per_tile.append(tile_pieces(model, window_of(rgb8, tile), tile, t, size, fast, params))
        if progress is not None:
            progress(t + 1, len(tiles))
    return stitch_tiles(per_tile, tiles, size, float(tile_iou_thresh), output_mode)


def window_of(rgb8: np.ndarray, tile: Tile) -> np.ndarray:
    """The ``(h, w, 3)`` pixels of a tile's window, contiguous."""
    x0, y0, x1, y1 = tile.window
    return np.ascontiguousarray(rgb8[y0:y1, x0:x1])


def tile_pieces(
    model: Sam,
    window: np.ndarray,
    tile: Tile,
    index: int,
    image_size: tuple[int, int],
    fast: bool,
    params: dict[str, Any],
) -> list[Piece]:
    """Segment everything in one tile's window; its masks as pieces in image coordinates.

    The unit of work of a tiled run: it needs the window's pixels only, so tiles can run in
    any process (:func:`samlib.batch.tiled.segment_everything_tiled_on`).
    """
    records = segment_everything(model, window, fast=fast, output_mode="uncompressed_rle", **params)
    return pieces_from_records(tile, records, image_size, index)


def stitch_tiles(
    per_tile: list[list[Piece]],
    tiles: list[Tile],
    image_size: tuple[int, int],
    tile_iou_thresh: float,
    output_mode: str,
) -> list[dict[str, Any]]:
    """Records of the whole image from each tile's pieces (in tile order), de-duplicated."""
    pieces: list[Piece] = []
    for found in per_tile:
        pieces += [replace(p, order=len(pieces) + k) for k, p in enumerate(found)]
    kept = stitch_pieces(pieces, tiles, tile_iou_thresh)
    return [piece_record(p, image_size, output_mode) for p in kept]
