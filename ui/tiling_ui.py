"""The large-image switch shared by the Segment everything and Prompts pages."""

from __future__ import annotations

from typing import Any

import streamlit as st

from samlib.app.session import WorkImage
from samlib.recipe import Tiling
from samlib.tiling.prompts import TiledEmbeddings
from samlib.tiling.stitch import Tile
from samlib.tiling.tiles import (
    SUGGEST_TILES_SHRINK,
    TILING_HELP,
    default_tiling,
    shrink_factor,
    suggest_tiles,
    tile_layout,
)
from ui import state

_TILED = "_tiled_embeddings"


def tiling_ui(model: Any, work: WorkImage, *, locked: str = "") -> Tiling | None:
    """The large-image switch: tiles with a halo, or the whole image; return the tiling.

    Shown only for an image larger than the model's input; on by default when small
    objects would shrink below a few pixels at that size (:func:`suggest_tiles`).
    ``locked``: why the settings cannot change now (the widgets are then disabled).
    """
    h, w = work.rgb8.shape[:2]
    size = int(model.image_encoder.img_size)
    if max(h, w) <= size:
        return None
    shrink = shrink_factor(model, (h, w))
    st.header("Large image")
    tiled = state.kept(
        st.toggle,
        "Segment in tiles",
        f"tiled_{work.key}",
        suggest_tiles(model, (h, w)),
        disabled=bool(locked),
        help="Cut the image into tiles with a halo, segment each at the model's full "
        "resolution and stitch the masks (duplicates in the overlaps are removed).",
    )
    st.caption(
        f"This image is {w} x {h} px; the model sees {size} px on the long side, so "
        f"{shrink:.1f} times smaller: an object 10 px wide covers {10 / shrink:.1f} px. "
        + (
            f"Tiles are on by default from {SUGGEST_TILES_SHRINK:g} times smaller."
            if suggest_tiles(model, (h, w))
            else "Tiles help when objects are only a few pixels wide."
        )
    )
    if locked:
        st.caption(locked)
    if not tiled:
        return None
    d_tile, d_halo = default_tiling(model)
    tile_size = state.kept(
        st.number_input,
        "Tile size (px)",
        "tile_size",
        d_tile,
        min_value=64,
        max_value=max(64, max(h, w)),
        step=32,
        disabled=bool(locked),
        help=TILING_HELP["tile_size"],
    )
    halo = state.kept(
        st.number_input,
        "Halo (px)",
        "tile_halo",
        d_halo,
        min_value=0,
        max_value=1024,
        step=16,
        disabled=bool(locked),
        help=TILING_HELP["halo"],
    )
    iou = state.kept(
        st.slider,
        "Same object across tiles at mask IoU",
        "tile_iou_thresh",
        0.5,
        min_value=0.05,
        max_value=0.95,
        step=0.05,
        disabled=bool(locked),
        help=TILING_HELP["tile_iou_thresh"],
    )
    n = len(tile_layout((h, w), int(tile_size), int(halo)))
    st.caption(f"{n} tiles of {int(tile_size) + 2 * int(halo)} px windows.")
    return Tiling(int(tile_size), int(halo), float(iou))


def tiled_embeddings(model: Any, work: WorkImage, tiling: Tiling) -> TiledEmbeddings:
    """The image's tiles, their embeddings computed as prompts need them (kept for the
    session's current image, model and tiling only)."""
    sig = (work.key, model.samlib_info.name, model.samlib_info.sha256, tiling)
    kept = st.session_state.get(_TILED)
    if kept is None or kept[0] != sig:
        kept = (
            sig,
            TiledEmbeddings.build(model, work.rgb8, tile_size=tiling.tile_size, halo=tiling.halo),
        )
        st.session_state[_TILED] = kept
    return kept[1]


def tile_cores(tiles: list[Tile] | tuple[Tile, ...]) -> list[tuple[int, int, int, int]]:
    """XYXY cores of the tiles, for the overlay's tile grid."""
    return [t.core for t in tiles]
