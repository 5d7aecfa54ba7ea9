"""One huge image on a Dask cluster: its tiles with halo run as tasks, stitched here.

Each task gets one window's pixels and returns that tile's pieces
(:func:`samlib.tiling.tiles.tile_pieces`), so a worker holds one window and its masks at a
time, whatever the image's size; the stitching and its de-duplication are the
single-process path's own (:func:`samlib.tiling.tiles.stitch_tiles`), and so are the
filters after it (:func:`samlib.recipe.last_filters`), so the records are the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from samlib.batch.workers import ModelSpec, torch_threads, worker_model
from samlib.errors import RecipeError
from samlib.everything.params import GeneratorParams
from samlib.image.display import check_rgb8
from samlib.recipe import Recipe, last_filters
from samlib.records.filters import FilterResult
from samlib.tiling.stitch import Piece, Tile
from samlib.tiling.tiles import (
    check_tile_iou,
    default_tiling,
    stitch_tiles,
    tile_layout,
    tile_pieces,
    window_of,
)

__all__ = ["replay_everything_on", "segment_everything_tiled_on"]


def _default_tiling(spec: ModelSpec) -> tuple[int, int]:
    return default_tiling(worker_model(spec)[0])


def _tile_task(
    spec: ModelSpec, window: np.ndarray, tile: Tile, threads: int, *args
) -> tuple[list[Piece], int]:
    with torch_threads(threads):
        return tile_pieces(worker_model(spec)[0], window, tile, *args)


def _tiles_on(
    client,
    spec: ModelSpec,
    rgb8: np.ndarray,
    tiles: list[Tile],
    params: GeneratorParams,
    fast: bool,
    floors: dict[str, float | None],
    thresholds: dict[str, float],
    threads: int,
    progress,
) -> tuple[list[list[Piece]], int]:
    """Each tile's pieces (in tile order), one task per tile, and the candidates decoded."""
    size = rgb8.shape[:2]
    futures = [
        client.submit(
            _tile_task,
            spec,
            window_of(rgb8, t),
            t,
            threads,
            i,
            size,
            params,
            fast,
            floors,
            thresholds,
            pure=False,
        )
        for i, t in enumerate(tiles)
    ]
    per_tile, n_candidates = [], 0
    for i, future in enumerate(futures):
        pieces, n = future.result()
        per_tile.append(pieces)
        n_candidates += n
        if progress is not None:
            progress(i + 1, len(tiles))
    return per_tile, n_candidates


def segment_everything_tiled_on(
    client,
    spec: ModelSpec,
    rgb8: np.ndarray,
    *,
    tile_size: int | None = None,
    halo: int | None = None,
    tile_iou_thresh: float = 0.5,
    fast: bool = False,
    threads: int = 1,
    progress=None,
    **params: Any,
) -> list[dict[str, Any]]:
    """:func:`samlib.tiling.tiles.segment_everything_tiled` with one Dask task per tile.

    ``client`` is a ``distributed.Client``; ``spec`` says which model the workers load
    (once per worker). ``threads`` torch threads run each tile. Other parameters are
    those of the single-process function, whose records this returns.
    """
    rgb8 = check_rgb8(rgb8)
    p = GeneratorParams.from_kwargs(output_mode=params.pop("output_mode", "coco_rle"), **params)
    iou = check_tile_iou(tile_iou_thresh)
    floors = {"iou_floor": p.pred_iou_thresh, "stability_floor": p.stability_score_thresh}
    if tile_size is None or halo is None:
        d_tile, d_halo = client.submit(_default_tiling, spec, pure=False).result()
        tile_size = d_tile if tile_size is None else tile_size
        halo = d_halo if halo is None else halo
    size = rgb8.shape[:2]
    tiles = tile_layout(size, tile_size, halo)
    per_tile, _ = _tiles_on(client, spec, rgb8, tiles, p, fast, floors, {}, threads, progress)
    return stitch_tiles(per_tile, tiles, size, iou, p.output_mode)


def replay_everything_on(
    client, spec: ModelSpec, recipe: Recipe, rgb8: np.ndarray, *, threads: int = 1, progress=None
) -> FilterResult:
    """:func:`samlib.recipe.replay_everything` of a tiled recipe, one Dask task per tile:
    the same records, filtered the same way."""
    e, f, t = recipe.everything, recipe.filters, recipe.tiling
    if e is None or f is None or t is None:
        raise RecipeError("replay_everything_on needs a tiled segment-everything recipe")
    rgb8 = check_rgb8(rgb8)
    size = rgb8.shape[:2]
    tiles = tile_layout(size, t.tile_size, t.halo)
    floors = {"iou_floor": e.iou_floor, "stability_floor": e.stability_floor}
    per_tile, n = _tiles_on(
        client, spec, rgb8, tiles, e.generator, e.fast, floors, f.thresholds(), threads, progress
    )
    records = stitch_tiles(per_tile, tiles, size, t.tile_iou_thresh, e.generator.output_mode)
    return last_filters(records, f, size, n)
