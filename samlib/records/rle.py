"""Column-major run-length encoding of binary masks, as ``segment_anything`` stores them.

``counts`` alternate runs of 0 and 1 over the mask flattened in column-major (Fortran)
order, starting with a run of 0 (which is 0 long if the first pixel is set): the
"uncompressed RLE" of COCO and of ``SamAutomaticMaskGenerator``. Vectorised with numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode(mask: np.ndarray) -> np.ndarray:
    """Run lengths (K,) int64 of an (H, W) bool mask, column-major, first run of zeros."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size])))
    if flat.size and flat[0]:
        counts = np.concatenate(([0], counts))
    return counts


def decode(counts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of run lengths ``counts`` (see :func:`encode`)."""
    h, w = size
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T


def area(counts: np.ndarray) -> int:
    """Number of set pixels."""
    return int(np.asarray(counts)[1::2].sum())


def to_uncompressed(counts: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """The stock generator's ``{"size": [H, W], "counts": [...]}`` dict."""
    return {
        "size": [int(size[0]), int(size[1])],
        "counts": np.asarray(counts, dtype=np.int64).tolist(),
    }


def to_coco(counts: np.ndarray, size: tuple[int, int]) -> dict[str, Any]:
    """Compressed COCO RLE with a str ``counts`` (JSON-ready), as ``coco_encode_rle``."""
    from pycocotools import mask as mask_utils

    h, w = int(size[0]), int(size[1])
    rle = mask_utils.frPyObjects(to_uncompressed(counts, size), h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle
