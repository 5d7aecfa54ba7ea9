"""Images larger than the model's input.

Tiles with a halo, stitched and de-duplicated, for everything and prompts.

May import: samlib.errors, samlib.coords, samlib.image, samlib.records, samlib.models,
samlib.prompts, samlib.everything.
"""

from __future__ import annotations

from samlib.tiling.prompts import (
    TiledEmbeddings,
    predict_candidates_tiled,
    predict_tiled,
    prompt_candidates,
)
from samlib.tiling.stitch import (
    Piece,
    piece_record,
    piece_rle,
    pieces_from_records,
    stitch_pieces,
)
from samlib.tiling.tiles import (
    TILING_HELP,
    TiledCandidates,
    default_tiling,
    refilter_tiled,
    segment_everything_tiled,
    shrink_factor,
    suggest_tiles,
    tile_layout,
    tiled_candidates,
)

__all__ = [
    "TiledEmbeddings",
    "predict_candidates_tiled",
    "predict_tiled",
    "prompt_candidates",
    "Piece",
    "piece_record",
    "piece_rle",
    "pieces_from_records",
    "stitch_pieces",
    "TILING_HELP",
    "TiledCandidates",
    "default_tiling",
    "refilter_tiled",
    "segment_everything_tiled",
    "shrink_factor",
    "suggest_tiles",
    "tile_layout",
    "tiled_candidates",
]
