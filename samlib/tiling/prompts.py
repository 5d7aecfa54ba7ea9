"""Prompting on images larger than the model's input, with one embedding per tile.

SAM encodes an image at its input size (1024 pixels on the long side), so on a large image
a nucleus is a few embedding cells wide. :class:`TiledEmbeddings` lays the image out in
tiles with a halo (:func:`samlib.tiling.tiles.tile_layout`) and encodes a tile's window only
when a prompt first needs it. :func:`predict_tiled` sends each prompt set to the tile
whose window holds all of its points and box, preferring the tile whose core holds the
prompt's centre (so the object gets the most context), and returns the masks in image
coordinates; :func:`predict_candidates_tiled` does the same for the app's prompt sets.
A prompt set wider than a window raises :class:`~samlib.errors.PromptError`:
use a larger ``tile_size`` or the untiled embedding for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from segment_anything.modeling import Sam

from samlib.errors import PromptError
from samlib.image.display import check_rgb8
from samlib.models.embeddings import Embedding, compute_embedding
from samlib.prompts.objects import PromptCandidates, PromptSet, predict_candidates
from samlib.prompts.prompting import PromptResult, check_prompt_load, predict
from samlib.tiling.stitch import Tile
from samlib.tiling.tiles import default_tiling, tile_layout

__all__ = [
    "TiledEmbeddings",
    "TiledPromptResult",
    "predict_candidates_tiled",
    "predict_tiled",
    "prompt_candidates",
]


@dataclass
class TiledEmbeddings:
    """An image with its tile layout and the embeddings of the tiles encoded so far.

    Attributes
    ----------
    rgb8 : numpy.ndarray
        (H, W, 3) uint8 RGB image.
    tiles : list of Tile
        The layout (XYXY boxes, image frame).
    embeddings : dict of int to Embedding
        Embeddings of the tiles' windows, filled on demand by :meth:`embedding`.
    """

    rgb8: np.ndarray
    tiles: list[Tile]
    embeddings: dict[int, Embedding] = field(default_factory=dict)

    @classmethod
    def build(
        cls, model: Sam, rgb8: np.ndarray, *, tile_size: int | None = None, halo: int | None = None
    ) -> TiledEmbeddings:
        """Lay out ``rgb8`` in tiles (defaults as :func:`samlib.tiling.tiles.default_tiling`)."""
        rgb8 = check_rgb8(rgb8)
        d_tile, d_halo = default_tiling(model)
        tiles = tile_layout(
            rgb8.shape[:2],
            d_tile if tile_size is None else tile_size,
            d_halo if halo is None else halo,
        )
        return cls(rgb8=rgb8, tiles=tiles)

    def embedding(self, model: Sam, index: int) -> Embedding:
        """The embedding of tile ``index``'s window, computed on first use."""
        if index not in self.embeddings:
            x0, y0, x1, y1 = self.tiles[index].window
            window = np.ascontiguousarray(self.rgb8[y0:y1, x0:x1])
            self.embeddings[index] = compute_embedding(model, window, key=f"tile{index}")
        return self.embeddings[index]

    def pick_tile(self, points: np.ndarray | None, box: np.ndarray | None) -> int:
        """Index of the tile for one prompt set: (N, 2) XY points and/or an XYXY box."""
        parts = []
        if points is not None and len(points):
            parts.append(np.asarray(points, dtype=float).reshape(-1, 2))
        if box is not None:
            parts.append(np.asarray(box, dtype=float).reshape(2, 2))
        if not parts:
            raise PromptError("a prompt needs points or a box")
        xy = np.concatenate(parts)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        centre = (lo + hi) / 2
        best, best_key = None, None
        for i, t in enumerate(self.tiles):
            wx0, wy0, wx1, wy1 = t.window
            if lo[0] < wx0 or lo[1] < wy0 or hi[0] > wx1 or hi[1] > wy1:
                continue
            cx0, cy0, cx1, cy1 = t.core
            in_core = cx0 <= centre[0] < cx1 and cy0 <= centre[1] < cy1
            # Otherwise the window whose centre is nearest the prompt's centre.
            dist = np.hypot((wx0 + wx1) / 2 - centre[0], (wy0 + wy1) / 2 - centre[1])
            key = (not in_core, dist)
            if best_key is None or key < best_key:
                best, best_key = i, key
        if best is None:
            raise PromptError(
                f"the prompt spans x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}: "
                f"wider than one tile window ({self.tiles[0].shape[1]} x "
                f"{self.tiles[0].shape[0]} pixels); use a larger tile_size"
            )
        return best


@dataclass(frozen=True)
class TiledPromptResult:
    """Masks for one prompt set, predicted on one tile.

    Attributes
    ----------
    result : PromptResult
        Masks (1, C, h, w) in the frame of ``tile.window``, scores, low-res logits.
    tile : Tile
        The tile used; ``tile.window`` is XYXY in image pixels.
    image_size : tuple of int
        (H, W) of the whole image.
    """

    result: PromptResult
    tile: Tile
    image_size: tuple[int, int]

    @property
    def scores(self) -> np.ndarray:
        """(C,) float32 predicted IoU of each mask."""
        return self.result.scores[0]

    def mask(self, k: int = 0) -> np.ndarray:
        """Mask ``k`` as an (H, W) bool array of the whole image."""
        x0, y0, x1, y1 = self.tile.window
        out = np.zeros(self.image_size, bool)
        out[y0:y1, x0:x1] = self.result.masks[0, k]
        return out


def predict_tiled(
    model: Sam,
    tiled: TiledEmbeddings,
    *,
    points=None,
    labels=None,
    box=None,
    multimask: bool = True,
) -> TiledPromptResult:
    """Predict masks for one prompt set on the tile that suits it best.

    Parameters
    ----------
    model : Sam
        The model the tiles are (to be) encoded with.
    tiled : TiledEmbeddings
        The image and its tile embeddings (encoded on demand).
    points : array-like, optional
        (N, 2) XY point prompts in image pixels.
    labels : array-like, optional
        (N,) 1 foreground / 0 background.
    box : array-like, optional
        (4,) XYXY box in image pixels.
    multimask : bool
        Three candidate masks (True) or one (False).

    Returns
    -------
    TiledPromptResult
    """
    pts = None if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
    bx = None if box is None else np.asarray(box, dtype=float).reshape(4)
    index = tiled.pick_tile(pts, bx)
    tile = tiled.tiles[index]
    offset = np.array(tile.window[:2], dtype=float)
    result = predict(
        model,
        tiled.embedding(model, index),
        points=None if pts is None else pts - offset,
        labels=labels,
        boxes=None if bx is None else bx - np.tile(offset, 2),
        multimask=multimask,
    )
    return TiledPromptResult(result=result, tile=tile, image_size=tiled.rgb8.shape[:2])


def predict_candidates_tiled(
    model: Sam,
    tiled: TiledEmbeddings,
    prompts: PromptSet,
    *,
    multimask: bool = True,
    clip_to_box: bool = True,
) -> PromptCandidates:
    """:func:`~samlib.prompts.objects.predict_candidates` on the one tile whose window holds
    every point and box of ``prompts`` (image pixels); masks in the image frame.

    Raises :class:`~samlib.errors.PromptError` when the prompts span more than a window,
    :class:`~samlib.errors.TooManyPromptsError` when the masks in the image frame would
    exceed the limits of :func:`samlib.prompts.prompting.check_prompt_load`.
    """
    per_set = 3 if multimask else 1
    check_prompt_load(len(prompts.points), len(prompts.boxes), per_set, tiled.rgb8.shape[:2])
    corners = np.concatenate([prompts.points.reshape(-1, 2), prompts.boxes.reshape(-1, 2)])
    index = tiled.pick_tile(corners, None)
    tile = tiled.tiles[index]
    x0, y0, x1, y1 = tile.window
    offset = np.array([x0, y0], dtype=float)
    local = PromptSet(prompts.points - offset, prompts.labels, prompts.boxes - np.tile(offset, 2))
    found = predict_candidates(
        model, tiled.embedding(model, index), local, multimask=multimask, clip_to_box=clip_to_box
    )
    masks = np.zeros((*found.masks.shape[:2], *tiled.rgb8.shape[:2]), bool)
    masks[..., y0:y1, x0:x1] = found.masks
    return PromptCandidates(
        masks,
        found.scores,
        found.stability,
        prompts.points,
        prompts.labels,
        prompts.boxes,
        multimask,
        clip_to_box,
    )


def prompt_candidates(
    model: Sam,
    source: Embedding | TiledEmbeddings,
    prompts: PromptSet,
    *,
    multimask: bool = True,
    clip_to_box: bool = True,
) -> PromptCandidates:
    """Candidates for ``prompts`` on the whole image's embedding or on its tiles."""
    if isinstance(source, TiledEmbeddings):
        return predict_candidates_tiled(
            model, source, prompts, multimask=multimask, clip_to_box=clip_to_box
        )
    return predict_candidates(model, source, prompts, multimask=multimask, clip_to_box=clip_to_box)
