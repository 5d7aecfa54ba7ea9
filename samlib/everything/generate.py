"""Segment everything: the workshop's automatic mask generator, exact and faster.

``segment_everything(model, rgb8, **params)`` returns the same records as
``segment_anything.SamAutomaticMaskGenerator(model, **params).generate(rgb8)``: same
count, order, masks, boxes, areas, stability scores and predicted IoUs, bit for bit
(the tests compare them field by field). The work it saves:

- the first decoder layer's image projections are computed once per image, not once per
  prompt (:mod:`samlib.decoding.decoder`); its other operations are stock's, in stock's batch
  layout, which is what keeps the bits identical;
- prompts whose three masks all fail the predicted-IoU filter skip the mask upscaling,
  and only masks that pass it are upsampled to full resolution (stock upsamples all);
- masks are kept as run lengths, never as a full-resolution stack, so memory does not
  grow with the number of candidates (at most one decode chunk of full-size logits).

The decoder itself is still stock arithmetic, so the gain is largest when the IoU
filter rejects many candidates (as with trained models) and on large images; see
``benchmarks/bench.py`` for measured ratios.

For the app, the work is split: :func:`generate_candidates` runs the model once
(expensive) and :func:`refilter` turns the candidates into records for any thresholds
(cheap, no model call). ``fast=True`` trades exactness for speed
(:mod:`samlib.everything.fastmode`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from segment_anything.modeling import Sam

from samlib.everything.candidates import (
    DEFAULT_IOU_FLOOR,
    DEFAULT_STABILITY_FLOOR,
    Candidates,
    Progress,
    decode_candidates,
)
from samlib.everything.fastmode import fast_candidates
from samlib.everything.params import OUTPUT_MODES, PARAM_HELP, GeneratorParams, check_floor
from samlib.everything.refilter import refilter
from samlib.image.display import check_rgb8

__all__ = [
    "DEFAULT_IOU_FLOOR",
    "DEFAULT_STABILITY_FLOOR",
    "OUTPUT_MODES",
    "PARAM_HELP",
    "Candidates",
    "GeneratorParams",
    "generate_candidates",
    "refilter",
    "segment_everything",
]


def generate_candidates(
    model: Sam,
    rgb8: np.ndarray,
    params: GeneratorParams | None = None,
    *,
    fast: bool = False,
    iou_floor: float | None = None,
    stability_floor: float | None = None,
    embedding: Any = None,
    progress: Progress | None = None,
) -> Candidates:
    """Run the decoder over the grid once; the result can be refiltered many times.

    Parameters
    ----------
    model : Sam
        A ``segment_anything`` model in eval mode.
    rgb8 : numpy.ndarray
        (H, W, 3) uint8 RGB image.
    params : GeneratorParams, optional
        Grid, crops and stability offset (default: the stock defaults).
    fast : bool
        Decode with the approximate fast mode (:mod:`samlib.everything.fastmode`), at the
        thresholds in ``params``, which then are the floors.
    iou_floor, stability_floor : float, optional
        Lowest thresholds :func:`refilter` will accept later (defaults
        :data:`DEFAULT_IOU_FLOOR`, :data:`DEFAULT_STABILITY_FLOOR`, capped at the
        thresholds in ``params``). Lower floors keep more candidates (more memory, slower).
    embedding : samlib.models.embeddings.Embedding, optional
        The whole image's embedding, if already computed.
    progress : callable, optional
        ``progress(done, total)`` in grid points.

    Returns
    -------
    Candidates
    """
    params = params or GeneratorParams()
    rgb8 = check_rgb8(rgb8)
    for name, floor in (("iou_floor", iou_floor), ("stability_floor", stability_floor)):
        if floor is not None:
            check_floor(name, floor)  # refused in fast mode too, which has no use for them
    if fast:
        return fast_candidates(model, rgb8, params, embedding=embedding, progress=progress)
    return decode_candidates(
        model,
        rgb8,
        params,
        iou_floor=iou_floor,
        stability_floor=stability_floor,
        embedding=embedding,
        progress=progress,
    )


def segment_everything(
    model: Sam,
    rgb8: np.ndarray,
    *,
    fast: bool = False,
    progress: Progress | None = None,
    embedding: Any = None,
    **params: Any,
) -> list[dict[str, Any]]:
    """Masks of everything in an image, as ``SamAutomaticMaskGenerator.generate`` returns them.

    Parameters
    ----------
    model : Sam
        A ``segment_anything`` model in eval mode.
    rgb8 : numpy.ndarray
        (H, W, 3) uint8 RGB image.
    fast : bool
        False (default): exactly the stock generator's records. True: an approximation
        that is several times faster (see :mod:`samlib.everything.fastmode`).
    progress : callable, optional
        ``progress(done, total)`` in grid points.
    embedding : samlib.models.embeddings.Embedding, optional
        The image's embedding, if already computed (saves one encoder run).
    **params
        Any ``SamAutomaticMaskGenerator`` parameter (see :data:`PARAM_HELP`).

    Returns
    -------
    list of dict
        One record per mask with keys :data:`samlib.records.build.RECORD_KEYS`:
        ``segmentation`` (H x W bool, or an RLE dict), ``area`` (pixels), ``bbox`` (XYWH),
        ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``, ``crop_box``
        (XYWH).
    """
    p = GeneratorParams.from_kwargs(**params)
    cands = generate_candidates(
        model,
        rgb8,
        p,
        fast=fast,
        iou_floor=p.pred_iou_thresh,
        stability_floor=p.stability_score_thresh,
        embedding=embedding,
        progress=progress,
    )
    return refilter(cands, p)
