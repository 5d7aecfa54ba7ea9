"""Run-length encodings of binary masks: one home for segment_anything's and COCO's.

``counts`` alternate runs of 0 and 1 over the mask flattened in column-major (Fortran)
order, starting with a run of 0 (which is 0 long if the first pixel is set): the
"uncompressed RLE" of COCO and of ``SamAutomaticMaskGenerator``. Vectorised with numpy.

:func:`encode_coco` and :func:`decode_coco` convert between bool masks and COCO's dicts
(``{"size": [H, W], "counts": str | bytes | list}``), as records and exports store them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from samlib.errors import ParameterError


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
    h, w = int(size[0]), int(size[1])
    rle = mask_utils.frPyObjects(to_uncompressed(counts, size), h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def encode_coco(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``(H, W)`` bool mask as COCO RLE with ``counts`` as a str (JSON-safe)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ParameterError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_coco(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode COCO RLE (compressed or uncompressed counts) to an ``(H, W)`` bool mask."""
    try:
        h, w = (int(s) for s in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ParameterError(
            f"not a COCO RLE dict (needs size [H, W] and counts): {rle!r:.80}"
        ) from exc
    if isinstance(counts, list | tuple | np.ndarray):
        if int(np.sum(counts)) != h * w:
            raise ParameterError(f"RLE counts sum to {int(np.sum(counts))}, expected {h}*{w}")
        compressed = mask_utils.frPyObjects({"size": [h, w], "counts": list(counts)}, h, w)
    else:
        compressed = {
            "size": [h, w],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    with warnings.catch_warnings():
        # pycocotools' Cython decoder predates NumPy 2's __array__ copy keyword; harmless.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(compressed).astype(bool)
