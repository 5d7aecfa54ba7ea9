"""Tables, recipes and downloadable files for a set of mask records shown in the app.

The pages describe what they did as a :class:`~samlib.recipe.Recipe`; its JSON, with the
provenance beside it, is the ``params.json`` of the downloads, which the command line
replays (``samlib everything IMAGE --recipe params.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from samlib.app.everything_run import EverythingRun
from samlib.app.session import WorkImage
from samlib.outputs.export import export_makers
from samlib.outputs.provenance import provenance
from samlib.prompts.objects import PromptedObject
from samlib.recipe import LiveFilters, ModelRef, ObjectPrompts, Recipe, Tiling
from samlib.records.masks import record_shape


def record_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workshop's record keys as table rows (the segmentation summarised by its size)."""
    rows = []
    for i, r in enumerate(records, start=1):
        h, w = record_shape(r)
        rows.append(
            {
                "id": i,
                "segmentation": f"{h}x{w} mask",
                "area": int(r["area"]),
                "bbox": [round(float(v), 1) for v in r["bbox"]],
                "predicted_iou": round(float(r["predicted_iou"]), 4),
                "point_coords": [[round(float(v), 1) for v in p] for p in r["point_coords"]],
                "stability_score": round(float(r["stability_score"]), 4),
                "crop_box": [int(v) for v in r["crop_box"]],
            }
        )
    return rows


def everything_recipe(
    work: WorkImage,
    model,
    run: EverythingRun,
    thresholds: dict[str, float],
    area_range: tuple[float, float],
    *,
    drop_whole_image: bool = True,
) -> Recipe:
    """The recipe of what the Segment everything page shows: the run and the live filters."""
    everything = replace(
        run.settings,
        iou_floor=run.candidates.iou_floor,
        stability_floor=run.candidates.stability_floor,
    )
    # thresholds the page does not show stay those the run decoded with, as in refilter
    filters = LiveFilters.from_generator(
        run.params,
        **thresholds,
        drop_whole_image=drop_whole_image,
        min_area=area_range[0],
        max_area=area_range[1],
    )
    return Recipe(
        kind="everything",
        model=ModelRef.of(model),
        image=work.settings,
        pixel_size_um=work.pixel_size_um,
        tiling=run.tiling,
        everything=everything,
        filters=filters,
    )


def prompts_recipe(
    work: WorkImage, model, objects: Sequence[PromptedObject], tiling: Tiling | None = None
) -> Recipe:
    """The recipe of the Prompts page's accepted objects (made on ``tiling``'s tiles)."""
    return Recipe(
        kind="prompts",
        model=ModelRef.of(model),
        tiling=tiling,
        image=work.settings,
        pixel_size_um=work.pixel_size_um,
        objects=tuple(ObjectPrompts.of(o) for o in objects),
    )


def params_json(work: WorkImage, recipe: Recipe, n_masks: int) -> dict[str, Any]:
    """The content of ``params.json``: the recipe and, beside it, its provenance."""
    prov = provenance(
        image_name=work.name,
        image_sha256=work.image.hash,
        n_masks=n_masks,
        source=f"app: {recipe.kind}",
    )
    return recipe.with_provenance(prov).to_dict()


def download_makers(
    work: WorkImage, records: Sequence[dict[str, Any]], params: dict[str, Any]
) -> dict[str, Callable[[], bytes]]:
    """One zero-argument function per export format (keys of
    :data:`samlib.outputs.export.EXPORTS`), for the image the page shows."""
    return export_makers(
        records,
        work.rgb8.shape[:2],
        intensities=work.image,
        plane=work.settings.plane,
        pixel_size_um=work.pixel_size_um,
        params=params,
        image_name=work.name,
    )
