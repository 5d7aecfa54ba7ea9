"""One huge image on a Dask cluster: its tiles with halo run as tasks, stitched here.

Each task gets one window's pixels and returns that tile's pieces
(:func:`samlib.tiling.tiles.tile_pieces`), so a worker holds one window and its masks at a
time, whatever the image's size; the stitching and its de-duplication are the
single-process path's own (:func:`samlib.tiling.tiles.stitch_tiles`), so the records are
the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from samlib.batch.task import ModelSpec, torch_threads, worker_model
from samlib.everything.params import GeneratorParams
from samlib.image.display import check_rgb8
from samlib.tiling.stitch import Piece, Tile
from samlib.tiling.tiles import default_tiling, stitch_tiles, tile_layout, tile_pieces, window_of

__all__ = ["segment_everything_tiled_on"]


def _default_tiling(spec: ModelSpec) -> tuple[int, int]:
    return default_tiling(worker_model(spec)[0])


def _tile_task(
    spec: ModelSpec,
    window: np.ndarray,
    tile: Tile,
    index: int,
    size: tuple[int, int],
    fast: bool,
    params: dict[str, Any],
    threads: int,
) -> list[Piece]:
    with torch_threads(threads):
        return tile_pieces(worker_model(spec)[0], window, tile, index, size, fast, params)


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
    output_mode = params.pop("output_mode", "coco_rle")
    GeneratorParams.from_kwargs(output_mode=output_mode, **params)  # fail before any work
    if tile_size is None or halo is None:
        d_tile, d_halo = client.submit(_default_tiling, spec, pure=False).result()
        tile_size = d_tile if tile_size is None else tile_size
        halo = d_halo if halo is None else halo
    size = rgb8.shape[:2]
    tiles = tile_layout(size, tile_size, halo)
    futures = [
        client.submit(
            _tile_task, spec, window_of(rgb8, t), t, i, size, fast, params, threads, pure=False
        )
        for i, t in enumerate(tiles)
    ]
    per_tile = []
    for i, future in enumerate(futures):
        per_tile.append(future.result())
        if progress is not None:
            progress(i + 1, len(tiles))
    return stitch_tiles(per_tile, tiles, size, float(tile_iou_thresh), output_mode)
