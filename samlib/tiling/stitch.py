"""Stitch the mask records of overlapping tiles into one image's records, de-duplicated.

Each tile's records are first turned into :class:`Piece` objects: the mask cropped to its
bounding box plus its offset in the image, so memory grows with the masks' areas, never
with (number of masks) x (image size). Stitching then works on pieces only:

1. A piece is *cut* when its box touches a side of its tile's window that is not a side
   of the image: the object continues outside what that tile saw.
2. Pieces of different tiles that overlap are compared inside the region both windows
   saw (where both tiles had the same pixels). Mask IoU there above ``iou_thresh``
   means the same object; pairs are joined greedily, best IoU first, and a group never
   holds two pieces of one tile (one tile's distinct masks, say a nucleus and its cell,
   stay distinct).
3. A group with an uncut piece is that piece (the object was seen whole; preferred:
   the piece whose centre lies in its tile's core, then the highest predicted IoU).
   A group of cut pieces only is their union (an object larger than a window), kept
   when its box centre lies in the core of one of its tiles, so that a fragment seen
   only at a window's edge is left to the tile that owns that part of the image.

The result keeps the order of the tiles and, within a tile, the generator's order, so a
single tile gives back the untiled generator's records unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from samlib import coords
from samlib.errors import ParameterError
from samlib.everything.params import OUTPUT_MODES
from samlib.records import rle as rlelib
from samlib.records.build import mask_record
from samlib.records.masks import bbox_slices, record_mask

# A box this close (pixels) to a window side that is not an image side counts as cut.
EDGE_TOL = 2


@dataclass(frozen=True)
class Tile:
    """One tile: the window the model sees and the core it is responsible for.

    Attributes
    ----------
    window : tuple of int
        XYXY box (pixels, image frame, end exclusive) of the pixels given to the model.
    core : tuple of int
        XYXY box inside ``window``; the cores of a layout partition the image.
    """

    window: tuple[int, int, int, int]
    core: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the window."""
        x0, y0, x1, y1 = self.window
        return y1 - y0, x1 - x0


@dataclass
class Piece:
    """One tile's mask, cropped to its box, in image coordinates.

    ``mask`` is (h, w) bool with ``mask[0, 0]`` at image pixel (row ``y0``, col ``x0``).
    ``bbox`` is the record's XYWH box in the image frame (stock convention:
    ``w = last column - first column``). ``point`` is XY, ``crop_box`` XYWH (image frame).
    """

    mask: np.ndarray
    y0: int
    x0: int
    bbox: list[int]
    area: int
    predicted_iou: float
    stability_score: float
    point: list[float]
    crop_box: list[int]
    tile: int
    order: int
    cut: bool = False


def _corners(box: tuple[slice, slice]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((row0, col0), (row1, col1))``, ends included, of :func:`bbox_slices`' slices."""
    rows, cols = box
    return (int(rows.start), int(cols.start)), (int(rows.stop) - 1, int(cols.stop) - 1)


def pieces_from_records(
    tile: Tile,
    records: Sequence[Mapping[str, Any]],
    image_size: tuple[int, int],
    tile_index: int,
    *,
    start: int = 0,
) -> list[Piece]:
    """Crop one tile's records (window frame, any segmentation format) into pieces.

    Parameters
    ----------
    tile : Tile
        The tile the records were generated on.
    records : sequence of dict
        The generator's records for ``tile.window`` (segmentation (h, w) bool or RLE).
    image_size : tuple of int
        (H, W) of the whole image.
    tile_index : int
        Index of the tile in its layout.
    start : int
        Order number of the first record (pieces are output in order).

    Only one window-sized mask is decoded at a time.
    """
    wx0, wy0, wx1, wy1 = tile.window
    h, w = image_size
    # Sides of the window that are inside the image: a mask touching them is cut.
    inner = (wx0 > 0, wy0 > 0, wx1 < w, wy1 < h)
    out = []
    for k, rec in enumerate(records):
        full = record_mask(rec)
        if full.shape != tile.shape:
            raise ParameterError(
                f"record {k} of tile {tile_index} has a {full.shape} mask, window is {tile.shape}"
            )
        box = bbox_slices(full)
        cut = False
        if box is None:
            mask, r0, c0 = np.zeros((0, 0), bool), 0, 0
        else:
            (r0, c0), (r1, c1) = _corners(box)
            mask = full[box].copy()
            touches = (
                c0 <= EDGE_TOL,
                r0 <= EDGE_TOL,
                c1 >= wx1 - wx0 - 1 - EDGE_TOL,
                r1 >= wy1 - wy0 - 1 - EDGE_TOL,
            )
            cut = any(t and i for t, i in zip(touches, inner, strict=True))
        del full
        bx, by, bw, bh = (int(v) for v in rec["bbox"])
        cx, cy, cw, ch = (int(v) for v in rec["crop_box"])
        px, py = (float(v) for v in rec["point_coords"][0])
        out.append(
            Piece(
                mask=mask,
                y0=wy0 + r0,
                x0=wx0 + c0,
                bbox=[bx + wx0, by + wy0, bw, bh],
                area=int(rec["area"]),
                predicted_iou=float(rec["predicted_iou"]),
                stability_score=float(rec["stability_score"]),
                point=[px + wx0, py + wy0],
                crop_box=[cx + wx0, cy + wy0, cw, ch],
                tile=tile_index,
                order=start + k,
                cut=cut,
            )
        )
    return out


def _extent(p: Piece) -> tuple[int, int, int, int]:
    """XYXY (end exclusive) of a piece's mask array in the image."""
    return p.x0, p.y0, p.x0 + p.mask.shape[1], p.y0 + p.mask.shape[0]


def _view(p: Piece, box: tuple[int, int, int, int]) -> np.ndarray:
    """The piece's mask over XYXY ``box`` (image frame), zero outside the piece."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0), bool)
    px0, py0, px1, py1 = _extent(p)
    ix0, iy0, ix1, iy1 = max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)
    if ix0 < ix1 and iy0 < iy1:
        out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = p.mask[
            iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0
        ]
    return out


def _intersect(a: Sequence[int], b: Sequence[int]) -> tuple[int, int, int, int] | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def shared_iou(a: Piece, b: Piece, shared: tuple[int, int, int, int]) -> float:
    """Mask IoU of two pieces inside ``shared`` (XYXY, the pixels both tiles saw).

    0.0 when neither piece has pixels there.
    """
    ea, eb = _extent(a), _extent(b)
    box_a, box_b = _intersect(ea, shared), _intersect(eb, shared)
    if box_a is None or box_b is None:
        return 0.0
    hull = (
        min(box_a[0], box_b[0]),
        min(box_a[1], box_b[1]),
        max(box_a[2], box_b[2]),
        max(box_a[3], box_b[3]),
    )
    ma, mb = _view(a, hull), _view(b, hull)
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union else 0.0


def _pairs(
    pieces: Sequence[Piece], tiles: Sequence[Tile], iou_thresh: float
) -> list[tuple[float, int, int]]:
    """(iou, i, j) for pieces of different tiles matching above ``iou_thresh``."""
    by_tile: dict[int, list[int]] = {}
    for i, p in enumerate(pieces):
        by_tile.setdefault(p.tile, []).append(i)
    ext = np.array([_extent(p) for p in pieces], dtype=np.int64).reshape(-1, 4)
    found = []
    for ta in sorted(by_tile):
        for tb in sorted(by_tile):
            if tb <= ta:
                continue
            shared = _intersect(tiles[ta].window, tiles[tb].window)
            if shared is None:
                continue
            ia, ib = np.array(by_tile[ta]), np.array(by_tile[tb])
            ea, eb = ext[ia][:, None, :], ext[ib][None, :, :]
            sx0, sy0, sx1, sy1 = shared
            # Boxes overlap each other and the shared region (vectorised pre-filter).
            ok = (
                (np.maximum(ea[..., 0], eb[..., 0]) < np.minimum(ea[..., 2], eb[..., 2]))
                & (np.maximum(ea[..., 1], eb[..., 1]) < np.minimum(ea[..., 3], eb[..., 3]))
                & (np.maximum(ea[..., 0], sx0) < np.minimum(ea[..., 2], sx1))
                & (np.maximum(ea[..., 1], sy0) < np.minimum(ea[..., 3], sy1))
            )
            for a, b in zip(*np.nonzero(ok), strict=True):
                i, j = int(ia[a]), int(ib[b])
                iou = shared_iou(pieces[i], pieces[j], shared)
                if iou > iou_thresh:
                    found.append((iou, i, j))
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    return found


def group_pieces(
    pieces: Sequence[Piece], tiles: Sequence[Tile], iou_thresh: float = 0.5
) -> list[list[int]]:
    """Groups of piece indices that are the same object seen by different tiles.

    Greedy, best IoU first; a group never holds two pieces of the same tile. Groups come
    in the order of their first piece.
    """
    parent = list(range(len(pieces)))
    members: dict[int, set[int]] = {i: {p.tile} for i, p in enumerate(pieces)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in _pairs(pieces, tiles, iou_thresh):
        ri, rj = root(i), root(j)
        if ri == rj or members[ri] & members[rj]:
            continue
        lo, hi = min(ri, rj), max(ri, rj)
        parent[hi] = lo
        members[lo] |= members.pop(hi)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(root(i), []).append(i)
    return [groups[r] for r in sorted(groups)]


def _centre_in_core(p: Piece, tile: Tile) -> bool:
    x, y, w, h = p.bbox
    cx, cy = x + w / 2, y + h / 2
    x0, y0, x1, y1 = tile.core
    return x0 <= cx < x1 and y0 <= cy < y1


def _union(group: Sequence[Piece]) -> Piece:
    """One piece from the union of cut pieces; scores and point of the largest piece."""
    boxes = [_extent(p) for p in group]
    hull = (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
    mask = np.zeros((hull[3] - hull[1], hull[2] - hull[0]), bool)
    for p in group:
        mask |= _view(p, hull)
    box = bbox_slices(mask)  # not None: cut pieces have pixels
    (r0, c0), (r1, c1) = _corners(box)
    mask = mask[box]
    best = max(group, key=lambda p: (p.area, p.predicted_iou))
    crops = [coords.xywh_to_xyxy(p.crop_box) for p in group]
    crop = [min(c[0] for c in crops), min(c[1] for c in crops)]
    crop += [max(c[2] for c in crops) - crop[0], max(c[3] for c in crops) - crop[1]]
    return Piece(
        mask=mask,
        y0=hull[1] + r0,
        x0=hull[0] + c0,
        bbox=[hull[0] + c0, hull[1] + r0, c1 - c0, r1 - r0],
        area=int(np.count_nonzero(mask)),
        predicted_iou=best.predicted_iou,
        stability_score=best.stability_score,
        point=best.point,
        crop_box=crop,
        tile=min(p.tile for p in group),
        order=min(p.order for p in group),
        cut=True,
    )


def stitch_pieces(
    pieces: Sequence[Piece], tiles: Sequence[Tile], iou_thresh: float = 0.5
) -> list[Piece]:
    """One piece per object: duplicates across tiles removed, cut pieces merged.

    See the module docstring for the rules. Output is in order of ``Piece.order``.
    """
    if not 0.0 <= iou_thresh <= 1.0:
        raise ParameterError(f"tile_iou_thresh must be in [0, 1], got {iou_thresh!r}")
    out = []
    for group in group_pieces(pieces, tiles, iou_thresh):
        ps = [pieces[i] for i in group]
        whole = [p for p in ps if not p.cut]
        if whole:
            out.append(
                max(whole, key=lambda p: (_centre_in_core(p, tiles[p.tile]), p.predicted_iou))
            )
            continue
        merged = ps[0] if len(ps) == 1 else _union(ps)
        if any(_centre_in_core(merged, tiles[p.tile]) for p in ps):
            out.append(merged)
    out.sort(key=lambda p: p.order)
    return out


def piece_rle(p: Piece, image_size: tuple[int, int]) -> np.ndarray:
    """Column-major run lengths (:mod:`samlib.records.rle`) of a piece in the whole image.

    Only an (H, w) strip of the piece's columns is materialised, never the whole image.
    """
    h, w = image_size
    ph, pw = p.mask.shape
    strip = np.zeros((h, pw), bool)
    strip[p.y0 : p.y0 + ph] = p.mask
    counts = rlelib.encode(strip).astype(np.int64)
    counts[0] += p.x0 * h
    tail = (w - p.x0 - pw) * h
    if len(counts) % 2:  # ends with a run of zeros
        counts[-1] += tail
    elif tail:
        counts = np.append(counts, tail)
    return counts


def piece_record(p: Piece, image_size: tuple[int, int], output_mode: str) -> dict[str, Any]:
    """The workshop's seven-key record of a piece, segmentation in ``output_mode``."""
    if output_mode not in OUTPUT_MODES:
        raise ParameterError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    if output_mode == "binary_mask":
        seg: Any = np.zeros(image_size, bool)
        ph, pw = p.mask.shape
        seg[p.y0 : p.y0 + ph, p.x0 : p.x0 + pw] = p.mask
    else:
        counts = piece_rle(p, image_size)
        if output_mode == "coco_rle":
            seg = rlelib.to_coco(counts, image_size)
        else:
            seg = rlelib.to_uncompressed(counts, image_size)
    return mask_record(
        seg,
        area=int(p.area),
        box=coords.xywh_to_xyxy(p.bbox),
        predicted_iou=p.predicted_iou,
        point_coords=[p.point],
        stability_score=p.stability_score,
        crop_box=coords.xywh_to_xyxy(p.crop_box),
    )
