"""The crops of segment everything, each with its embedding and point prompts.

``SamAutomaticMaskGenerator`` prompts the whole image (crop 0) and, with ``crop_n_layers``,
zoomed-in crops, each encoded on its own. The exact and the fast decoders walk the same
crops: :func:`crop_layout` lays them out and :func:`iter_crops` encodes them one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import generate_crop_boxes

from samlib.errors import ParameterError
from samlib.everything.params import GeneratorParams
from samlib.models.embeddings import Embedding, check_embedding, compute_embedding

#: Smallest crop side, pixels. Every crop is resized to the model's 1024-pixel input and
#: encoded on its own: a crop of a few pixels costs a full encoder pass and shows SAM
#: nothing but blown-up pixels.
MIN_CROP_SIDE = 32


@dataclass(frozen=True)
class CropLayout:
    """Where segment everything prompts an image.

    Attributes
    ----------
    boxes : list of [x0, y0, x1, y1]
        Crop boxes in image pixels; the first is the whole image.
    layers : list of int
        Crop layer of each box (0 = whole image).
    grids : list of (N, 2) float arrays
        Point grid per layer, XY normalised to [0, 1] of the crop.
    """

    boxes: list[list[int]]
    layers: list[int]
    grids: list[np.ndarray]

    @property
    def n_points(self) -> int:
        """Point prompts over every crop (the unit of progress)."""
        return sum(len(self.grids[layer]) for layer in self.layers)


def crop_layout(size: tuple[int, int], params: GeneratorParams) -> CropLayout:
    """The crops and point grids of an ``(H, W)`` image, as the stock generator lays them.

    Raises :class:`~samlib.errors.ParameterError` when ``crop_n_layers`` cuts the image into
    crops with a side under :data:`MIN_CROP_SIDE` pixels (the message names the most layers
    this image allows); the whole image alone (no crop layers) is never refused.
    """
    n, ratio = params.crop_n_layers, params.crop_overlap_ratio
    small = _smallest_crop(size, n, ratio)
    if n > 0 and min(small) < MIN_CROP_SIDE:
        # crops shrink with every layer: name the last layer that still fits
        fits = [k for k in range(1, n) if min(_smallest_crop(size, k, ratio)) >= MIN_CROP_SIDE]
        raise ParameterError(
            f"crop_n_layers={n} cuts this {size[1]} x {size[0]} px image into crops of "
            f"{small[1]} x {small[0]} px, under {MIN_CROP_SIDE} px a side; use "
            f"crop_n_layers={max(fits, default=0)} or fewer for it"
        )
    boxes, layers = generate_crop_boxes(size, n, ratio)
    return CropLayout([list(map(int, b)) for b in boxes], list(layers), params.grids())


def _smallest_crop(size: tuple[int, int], n_layers: int, ratio: float) -> tuple[int, int]:
    """``(height, width)`` of the smallest crop the stock generator cuts from ``size``."""
    boxes, _ = generate_crop_boxes(size, n_layers, ratio)
    return min(y1 - y0 for _, y0, _, y1 in boxes), min(x1 - x0 for x0, _, x1, _ in boxes)


@dataclass(frozen=True)
class Crop:
    """One crop, encoded: its index and box in the layout, embedding and points.

    ``points`` are ``(N, 2)`` XY crop pixels (the layer's grid scaled to the crop size).
    """

    index: int
    box: list[int]
    embedding: Embedding
    points: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the crop."""
        return tuple(self.embedding.original_size)


def iter_crops(
    model: Sam, rgb8: np.ndarray, layout: CropLayout, embedding: Embedding | None = None
) -> Iterator[Crop]:
    """Encode each crop of ``layout`` in turn (crop 0 from ``embedding`` when given).

    Raises :class:`~samlib.errors.ParameterError` when ``embedding`` is of another image.
    """
    for index, (box, layer) in enumerate(zip(layout.boxes, layout.layers, strict=True)):
        x0, y0, x1, y1 = box
        crop = rgb8[y0:y1, x0:x1, :]
        if index == 0 and embedding is not None:
            check_embedding(embedding, rgb8)
            emb = embedding
        else:
            with torch.no_grad():
                emb = compute_embedding(model, np.ascontiguousarray(crop))
        points = layout.grids[layer] * np.array(crop.shape[:2])[None, ::-1]
        yield Crop(index, box, emb, points)
