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

from samlib.everything.params import GeneratorParams
from samlib.models.embeddings import Embedding, check_embedding, compute_embedding


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
    """The crops and point grids of an ``(H, W)`` image, as the stock generator lays them."""
    boxes, layers = generate_crop_boxes(size, params.crop_n_layers, params.crop_overlap_ratio)
    return CropLayout([list(map(int, b)) for b in boxes], list(layers), params.grids())


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
