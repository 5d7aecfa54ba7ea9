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
from samlib.everything.generate import generate_candidates
from samlib.everything.refilter import refilter_live
from samlib.image.microscopy import MicroscopyImage
from samlib.models.embeddings import Embedding, compute_embedding
from samlib.outputs.export import write_exports
from samlib.outputs.provenance import provenance
from samlib.prompts.objects import PromptedObject, predict_candidates, records_of
from samlib.recipe.settings import Recipe
from samlib.records.filters import FilterResult, filter_records

__all__ = [
    "check_model",
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


def replay_everything(
    recipe: Recipe, model, rgb8: np.ndarray, *, embedding: Embedding | None = None, progress=None
) -> FilterResult:
    """Segment everything as the recipe says: decode, then the live filters, as the app."""
    if recipe.everything is None or recipe.filters is None:
        raise RecipeError(f"a {recipe.kind} recipe has no segment-everything settings")
    e, f = recipe.everything, recipe.filters
    cands = generate_candidates(
        model,
        rgb8,
        e.generator,
        fast=e.fast,
        iou_floor=e.iou_floor,
        stability_floor=e.stability_floor,
        embedding=embedding,
        progress=progress,
    )
    records = refilter_live(cands, **f.thresholds())
    return filter_records(
        records,
        min_area=f.min_area,
        max_area=f.max_area,
        drop_whole_image=f.drop_whole_image,
        image_shape=rgb8.shape[:2],
        n_candidates=len(cands),
    )


def replay_prompts(recipe: Recipe, model, embedding: Embedding) -> list[PromptedObject]:
    """The recipe's prompted objects, predicted again on ``embedding``."""
    out = []
    for i, spec in enumerate(recipe.objects):
        found = predict_candidates(
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
    emb = embedding if embedding is not None else compute_embedding(model, rgb8)
    return rgb8, records_of(replay_prompts(recipe, model, emb))


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
