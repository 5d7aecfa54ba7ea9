"""Images larger than the model's input.

Tiles with a halo, stitched and de-duplicated, for everything and prompts.

May import: samlib.errors, samlib.coords, samlib.image, samlib.records, samlib.models,
samlib.prompts, samlib.everything.
"""

from __future__ import annotations

from samlib.tiling.prompts import TiledEmbeddings, predict_tiled
from samlib.tiling.stitch import (
    Piece,
    piece_record,
    piece_rle,
    pieces_from_records,
    stitch_pieces,
)
from samlib.tiling.tiles import default_tiling, segment_everything_tiled, tile_layout

__all__ = [
    "TiledEmbeddings",
    "predict_tiled",
    "Piece",
    "piece_record",
    "piece_rle",
    "pieces_from_records",
    "stitch_pieces",
    "default_tiling",
    "segment_everything_tiled",
    "tile_layout",
]
