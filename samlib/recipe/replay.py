"""Replaying a recipe: the steps the app ran, in the app's order, on any image."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from samlib.errors import ModelMismatchWarning, RecipeError
from samlib.everything.candidates import Candidates
from samlib.everything.generate import generate_candidates
from samlib.everything.refilter import refilter_live
from samlib.image.microscopy import MicroscopyImage
from samlib.models.embeddings import Embedding, compute_embedding
from samlib.outputs.export import write_exports
from samlib.outputs.provenance import provenance
from samlib.prompts.objects import PromptedObject, records_of
from samlib.recipe.settings import EverythingSettings, LiveFilters, Recipe, Tiling
from samlib.records.filters import FilterResult, filter_records
from samlib.tiling.prompts import TiledEmbeddings, prompt_candidates
from samlib.tiling.tiles import TiledCandidates, refilter_tiled, tile_layout, tiled_candidates

__all__ = [
    "check_model",
    "decode_everything",
    "last_filters",
    "live_filter",
    "needs_embedding",
    "prompt_source",
    "pixel_size_of",
    "replay",
    "replay_everything",
    "replay_prompts",
    "write_result",
]


def check_model(recipe: Recipe, model) -> str | None:
    """Warn (:class:`~samlib.errors.ModelMismatchWarning`) when ``model`` (a loaded model,
    or its weights' SHA-256) is not the recipe's. Returns the warning text, or None."""
    if isinstance(model, str):
        loaded = model
    else:
        loaded = getattr(getattr(model, "samlib_info", None), "sha256", None)
    want = recipe.model.sha256
    if not want or not loaded or loaded == want:
        return None
    text = (
        f"the model's weights (SHA-256 {loaded[:12]}...) are not those the recipe was made "
        f"with ({want[:12]}...); results can differ"
    )
    warnings.warn(text, ModelMismatchWarning, stacklevel=2)
    return text


def decode_everything(
    settings: EverythingSettings,
    model,
    rgb8: np.ndarray,
    *,
    tiling: Tiling | None = None,
    embedding: Embedding | None = None,
    progress=None,
) -> Candidates | TiledCandidates:
    """The expensive step of segment everything, as ``settings`` say: the model over the
    grid of the whole image, or of each tile of ``tiling`` (``progress`` then counts
    tiles)."""
    floors = {"iou_floor": settings.iou_floor, "stability_floor": settings.stability_floor}
    if tiling is None:
        return generate_candidates(
            model,
            rgb8,
            settings.generator,
            fast=settings.fast,
            embedding=embedding,
            progress=progress,
            **floors,
        )
    t = tiling
    return tiled_candidates(
        model,
        rgb8,
        settings.generator,
        tile_size=t.tile_size,
        halo=t.halo,
        tile_iou_thresh=t.tile_iou_thresh,
        fast=settings.fast,
        embedding=embedding,
        progress=progress,
        **floors,
    )


def needs_embedding(tiling: Tiling | None, image_size: tuple[int, int]) -> bool:
    """Whether :func:`decode_everything` with ``tiling`` would use the whole (H, W) image's
    embedding (not when the image is cut into several tiles, each encoded on its own)."""
    t = tiling
    return t is None or len(tile_layout(image_size, t.tile_size, t.halo)) == 1


def live_filter(
    cands: Candidates | TiledCandidates, filters: LiveFilters, *, area: bool = True
) -> FilterResult:
    """The cheap steps: thresholds and NMS (per tile, then stitched, for a tiled decode),
    then the whole-image outlier and, with ``area``, the area range."""
    if isinstance(cands, TiledCandidates):
        records = refilter_tiled(cands, **filters.thresholds())
    else:
        records = refilter_live(cands, **filters.thresholds())
    return last_filters(records, filters, tuple(cands.image_size), len(cands), area=area)


def last_filters(
    records: list[dict[str, Any]],
    filters: LiveFilters,
    image_size: tuple[int, int],
    n_candidates: int,
    *,
    area: bool = True,
) -> FilterResult:
    """The filters after thresholds and NMS: the whole-image outlier and, with ``area``,
    the area range (:func:`~samlib.records.filters.filter_records`)."""
    return filter_records(
        records,
        min_area=filters.min_area if area else None,
        max_area=filters.max_area if area else None,
        drop_whole_image=filters.drop_whole_image if area else False,
        image_shape=image_size,
        n_candidates=n_candidates,
    )


def replay_everything(
    recipe: Recipe, model, rgb8: np.ndarray, *, embedding: Embedding | None = None, progress=None
) -> FilterResult:
    """Segment everything as the recipe says: decode, then the live filters, as the app."""
    if recipe.everything is None or recipe.filters is None:
        raise RecipeError(f"a {recipe.kind} recipe has no segment-everything settings")
    cands = decode_everything(
        recipe.everything,
        model,
        rgb8,
        tiling=recipe.tiling,
        embedding=embedding,
        progress=progress,
    )
    return live_filter(cands, recipe.filters)


def replay_prompts(
    recipe: Recipe, model, embedding: Embedding | TiledEmbeddings
) -> list[PromptedObject]:
    """The recipe's prompted objects, predicted again on ``embedding`` (the whole image's,
    or its tiles' when the recipe has tiling)."""
    out = []
    for i, spec in enumerate(recipe.objects):
        found = prompt_candidates(
            model,
            embedding,
            spec.prompt_set(),
            multimask=spec.multimask,
            clip_to_box=spec.clip_to_box,
        )
        n = found.masks.shape[1]
        if spec.candidate >= n:
            raise RecipeError(
                f"recipe object {i}: candidate {spec.candidate} does not exist; its prompts "
                f"give {n}"
            )
        out.append(found.objects(spec.candidate)[0])
    return out


def replay(
    recipe: Recipe,
    model,
    image: MicroscopyImage,
    *,
    embedding: Embedding | None = None,
    progress=None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Convert ``image`` and make the recipe's masks: ``(rgb8, records)``."""
    rgb8 = recipe.image.render(image)
    if recipe.kind == "everything":
        result = replay_everything(recipe, model, rgb8, embedding=embedding, progress=progress)
        return rgb8, result.kept
    return rgb8, records_of(
        replay_prompts(recipe, model, prompt_source(recipe, model, rgb8, embedding))
    )


def prompt_source(
    recipe: Recipe, model, rgb8: np.ndarray, embedding: Embedding | None = None
) -> Embedding | TiledEmbeddings:
    """What :func:`replay_prompts` prompts: the recipe's tiles of ``rgb8`` (encoded when a
    prompt needs them), else ``embedding`` or a new embedding of the whole image."""
    if recipe.tiling is not None:
        t = recipe.tiling
        return TiledEmbeddings.build(model, rgb8, tile_size=t.tile_size, halo=t.halo)
    return embedding if embedding is not None else compute_embedding(model, rgb8)


def pixel_size_of(recipe: Recipe, image: MicroscopyImage) -> float | None:
    """The recipe's pixel size (µm), else the one the image file records."""
    return recipe.pixel_size_um if recipe.pixel_size_um is not None else image.pixel_size_um


def write_result(
    folder: str | os.PathLike[str],
    recipe: Recipe,
    image: MicroscopyImage,
    rgb8: np.ndarray,
    records: list[dict[str, Any]],
    *,
    image_name: str,
    source: str,
    formats: Sequence[str],
    table: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write a replayed result's exports, with the recipe and its provenance as params.json.

    ``source`` says which surface ran it (the command line, a batch); ``table`` is the
    records' measurement table when already made.
    """
    prov = provenance(
        image_name=image_name, image_sha256=image.hash, n_masks=len(records), source=source
    )
    return write_exports(
        folder,
        records,
        rgb8.shape[:2],
        intensities=image,
        plane=recipe.image.plane,
        pixel_size_um=pixel_size_of(recipe, image),
        params=recipe.with_provenance(prov).to_dict(),
        image_name=image_name,
        formats=formats,
        table=table,
    )
