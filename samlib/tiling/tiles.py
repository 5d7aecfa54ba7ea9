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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from segment_anything.modeling import Sam

from samlib.errors import ParameterError
from samlib.everything.candidates import Candidates
from samlib.everything.generate import generate_candidates
from samlib.everything.params import GeneratorParams
from samlib.everything.refilter import refilter_live
from samlib.image.display import check_rgb8
from samlib.tiling.stitch import Piece, Tile, piece_record, pieces_from_records, stitch_pieces

__all__ = [
    "SUGGEST_TILES_SHRINK",
    "TILING_HELP",
    "Tile",
    "TiledCandidates",
    "candidate_pieces",
    "check_tile_iou",
    "refilter_tiled",
    "tiled_candidates",
    "default_tiling",
    "segment_everything_tiled",
    "shrink_factor",
    "stitch_tiles",
    "suggest_tiles",
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


#: Tiles are suggested when the model would see an image at 1/3 of its size or less: an
#: object 9 px wide (a small nucleus) would then cover 3 px or fewer of the model's input,
#: less than one cell of SAM's mask grid (a quarter of its input's resolution).
SUGGEST_TILES_SHRINK = 3.0


def shrink_factor(model: Sam, image_size: tuple[int, int]) -> float:
    """How many times smaller the model sees an (H, W) image: long side / input size."""
    return max(image_size) / float(model.image_encoder.img_size)


def suggest_tiles(model: Sam, image_size: tuple[int, int]) -> bool:
    """Whether small objects would shrink below a few pixels at the model's input size
    (:data:`SUGGEST_TILES_SHRINK`), so that tiles should be on."""
    return shrink_factor(model, image_size) >= SUGGEST_TILES_SHRINK


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
    p = GeneratorParams.from_kwargs(output_mode=params.pop("output_mode", "coco_rle"), **params)
    tiles = _layout(model, rgb8.shape[:2], tile_size, halo)
    iou = check_tile_iou(tile_iou_thresh)
    size = rgb8.shape[:2]
    per_tile = []
    floors = {"iou_floor": p.pred_iou_thresh, "stability_floor": p.stability_score_thresh}
    for t, tile in enumerate(tiles):
        per_tile.append(
            tile_pieces(model, window_of(rgb8, tile), tile, t, size, p, fast, floors)[0]
        )
        if progress is not None:
            progress(t + 1, len(tiles))
    return stitch_tiles(per_tile, tiles, size, iou, p.output_mode)


def check_tile_iou(value: Any) -> float:
    """``tile_iou_thresh`` as a float in [0, 1]; :class:`ParameterError` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ParameterError(f"tile_iou_thresh must be in [0, 1], got {value!r}")
    return float(value)


def _layout(model: Sam, size: tuple[int, int], tile_size: int | None, halo: int | None):
    d_tile, d_halo = default_tiling(model)
    return tile_layout(
        size, d_tile if tile_size is None else tile_size, d_halo if halo is None else halo
    )


@dataclass(frozen=True, eq=False)
class TiledCandidates:
    """The candidates of every tile of one image, for live re-filtering without the model.

    The tiled counterpart of :class:`~samlib.everything.candidates.Candidates`: the app
    decodes once (:func:`tiled_candidates`) and re-filters on every slider move
    (:func:`refilter_tiled`), each tile's candidates filtered as the untiled ones are and
    the tiles then stitched.

    Attributes
    ----------
    tiles : tuple of Tile
        The layout (row-major).
    per_tile : tuple of Candidates
        One per tile, in the window's frame.
    image_size : tuple of int
        (H, W) of the whole image.
    tile_iou_thresh : float
        Stitching's same-object IoU.
    """

    tiles: tuple[Tile, ...]
    per_tile: tuple[Candidates, ...]
    image_size: tuple[int, int]
    tile_iou_thresh: float

    def __len__(self) -> int:
        return sum(len(c) for c in self.per_tile)

    @property
    def iou_floor(self) -> float:
        """The decode floor of predicted IoU (the same in every tile)."""
        return self.per_tile[0].iou_floor

    @property
    def stability_floor(self) -> float:
        """The decode floor of stability (the same in every tile)."""
        return self.per_tile[0].stability_floor

    @property
    def params(self) -> GeneratorParams:
        """The generator parameters every tile was decoded with."""
        return self.per_tile[0].params


def tiled_candidates(
    model: Sam,
    rgb8: np.ndarray,
    params: GeneratorParams,
    *,
    tile_size: int,
    halo: int,
    tile_iou_thresh: float = 0.5,
    fast: bool = False,
    iou_floor: float | None = None,
    stability_floor: float | None = None,
    embedding: Any = None,
    progress: TileProgress | None = None,
) -> TiledCandidates:
    """Decode every tile's grid once (:func:`generate_candidates` per window).

    ``embedding`` (of the whole image) is used only when one window is the whole image;
    otherwise each window is encoded. ``progress(done, total)`` counts tiles.
    """
    rgb8 = check_rgb8(rgb8)
    size = rgb8.shape[:2]
    tiles = tile_layout(size, tile_size, halo)
    iou = check_tile_iou(tile_iou_thresh)
    whole = len(tiles) == 1 and tiles[0].shape == tuple(size)
    per_tile = []
    for t, tile in enumerate(tiles):
        per_tile.append(
            generate_candidates(
                model,
                window_of(rgb8, tile),
                params,
                fast=fast,
                iou_floor=iou_floor,
                stability_floor=stability_floor,
                embedding=embedding if whole else None,
            )
        )
        if progress is not None:
            progress(t + 1, len(tiles))
    return TiledCandidates(tuple(tiles), tuple(per_tile), (int(size[0]), int(size[1])), iou)


def refilter_tiled(tiled: TiledCandidates, **thresholds: float) -> list[dict[str, Any]]:
    """Records of the whole image for live thresholds (no model call).

    Each tile's candidates are filtered as :func:`samlib.everything.refilter.refilter_live`
    filters an untiled image's, then stitched (:func:`stitch_tiles`), in the generator's
    ``output_mode``. The same records as a tiled run decoded at these thresholds.
    """
    per_tile = [
        candidate_pieces(c, tile, t, tiled.image_size, thresholds)
        for t, (tile, c) in enumerate(zip(tiled.tiles, tiled.per_tile, strict=True))
    ]
    return stitch_tiles(
        per_tile,
        list(tiled.tiles),
        tiled.image_size,
        tiled.tile_iou_thresh,
        tiled.params.output_mode,
    )


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
    params: GeneratorParams,
    fast: bool,
    floors: dict[str, float | None],
    thresholds: dict[str, float] | None = None,
) -> tuple[list[Piece], int]:
    """Segment everything in one tile's window: its masks as pieces in image coordinates,
    and the number of candidates decoded.

    The unit of work of a tiled run: it needs the window's pixels only, so tiles can run in
    any process (:mod:`samlib.batch.tiled`). ``floors`` (``iou_floor``,
    ``stability_floor``) are the decode floors and ``thresholds`` the live thresholds, as
    a recipe gives them (None: those of ``params``).
    """
    cands = generate_candidates(model, window, params, fast=fast, **floors)
    return candidate_pieces(cands, tile, index, image_size, thresholds or {}), len(cands)


def candidate_pieces(
    cands: Candidates,
    tile: Tile,
    index: int,
    image_size: tuple[int, int],
    thresholds: dict[str, float],
) -> list[Piece]:
    """One tile's candidates, filtered at ``thresholds`` (as the untiled live filter), as
    pieces in image coordinates."""
    records = refilter_live(cands, output_mode="uncompressed_rle", **thresholds)
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
