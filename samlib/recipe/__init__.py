"""A recipe: everything that produced a result, as the versioned JSON of ``params.json``.

The app writes one with every download and the command line with every output folder;
the command line (``samlib everything IMAGE --recipe params.json``) and every later tool
read it back and get the same pixels, because replaying runs the very steps the app ran:

- image conversion: :class:`~samlib.image.display.DisplaySettings` and the pixel size;
- model: registry name (or checkpoint path) and the SHA-256 of its weights;
- tiling: a large image cut into tiles with a halo (:mod:`samlib.tiling`), or none;
- segment everything: generator parameters, fast mode and the live-filter floors
  (:func:`~samlib.everything.generate.generate_candidates`, per tile when tiled), then
  the live filters:
  thresholds and NMS (:func:`~samlib.everything.refilter.refilter_live`), the whole-image
  outlier and the area range (:func:`~samlib.records.filters.filter_records`);
- prompts: each kept object's points, labels, box, chosen candidate and options
  (:func:`~samlib.prompts.objects.predict_candidates`, on the tile holding the prompts
  when tiled).

JSON layout (version 1; keys left out take their defaults, unknown keys are refused)::

    {"recipe": 1, "kind": "everything" | "prompts",
     "image": {"channels", "percentiles", "gamma", "plane", "pixel_size_um"},
     "model": {"name", "sha256"},
     "tiling": null | {"tile_size", "halo", "tile_iou_thresh"},
     "everything": {"generator": {...}, "fast", "iou_floor", "stability_floor"},
     "filters": {"pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                 "crop_nms_thresh", "drop_whole_image", "min_area", "max_area"},
     "objects": [{"points", "labels", "box", "candidate", "multimask", "clip_to_box"}],
     "provenance": {...}}

``everything`` and ``filters`` belong to kind ``everything``, ``objects`` to kind
``prompts``. Areas are in pixels, points XY and boxes XYXY in image pixels.
``provenance`` (:mod:`samlib.outputs.provenance`) is kept as read and never replayed.

Modules: :mod:`~samlib.recipe.settings` (the dataclasses and their JSON),
:mod:`~samlib.recipe.checks` (value checks), :mod:`~samlib.recipe.replay` (replaying).

May import: every subpackage but app and cli.
"""

from __future__ import annotations

from samlib.recipe.replay import (
    check_model,
    decode_everything,
    last_filters,
    live_filter,
    needs_embedding,
    pixel_size_of,
    prompt_source,
    replay,
    replay_everything,
    replay_prompts,
    write_result,
)
from samlib.recipe.settings import (
    KINDS,
    RECIPE_VERSION,
    EverythingSettings,
    LiveFilters,
    ModelRef,
    ObjectPrompts,
    Recipe,
    Tiling,
    read_recipe,
)

__all__ = [
    "KINDS",
    "RECIPE_VERSION",
    "EverythingSettings",
    "LiveFilters",
    "ModelRef",
    "ObjectPrompts",
    "Recipe",
    "Tiling",
    "check_model",
    "decode_everything",
    "last_filters",
    "live_filter",
    "needs_embedding",
    "pixel_size_of",
    "prompt_source",
    "read_recipe",
    "replay",
    "replay_everything",
    "replay_prompts",
    "write_result",
]
