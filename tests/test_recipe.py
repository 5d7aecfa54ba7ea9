"""Recipes: what the app describes, replayed by the library, gives the app's masks exactly."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from samlib.app.everything_run import area_filter, refilter_run, run_everything
from samlib.app.results import everything_recipe, prompts_recipe
from samlib.app.session import prepare_image
from samlib.errors import ModelMismatchWarning, PromptError, RecipeError
from samlib.image.display import DisplaySettings
from samlib.image.microscopy import as_image
from samlib.models.embeddings import compute_embedding
from samlib.prompts.objects import PromptSet, predict_candidates
from samlib.recipe import (
    LiveFilters,
    Recipe,
    Tiling,
    check_model,
    read_recipe,
    replay,
    replay_everything,
)
from samlib.records.masks import labels_from_records
from samlib.tiling.prompts import TiledEmbeddings, predict_candidates_tiled
from tests.test_everything import colored_disks


def _same_records(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["segmentation"], y["segmentation"])
        for key in ("area", "bbox", "predicted_iou", "stability_score", "point_coords"):
            assert x[key] == y[key], key


@pytest.fixture(scope="module")
def work():
    return prepare_image(as_image(colored_disks(), name="disks.png"), pixel_size_um=0.5)


@pytest.mark.parametrize("fast", [False, True], ids=["exact", "fast"])
def test_everything_recipe_replays_the_pages_records(sharp_sam, work, fast):
    # the Segment everything page: one run, live thresholds, the whole-image and area filters
    params = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.05}
    run = run_everything(sharp_sam, work, params, iou_floor=0.0, stability_floor=0.0, fast=fast)
    thresholds = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.1, "box_nms_thresh": 0.9}
    shown = refilter_run(run, **thresholds)
    areas = sorted(shown.areas)
    assert len(areas) >= 4
    area = (int(areas[1]), int(areas[len(areas) // 2]))
    page = area_filter(shown, area, drop_whole_image=False)
    assert 0 < len(page.kept) < len(shown.records)  # the filters did something
    recipe = everything_recipe(work, sharp_sam, run, thresholds, area, drop_whole_image=False)

    # through JSON, as params.json, and back
    again = Recipe.from_dict(json.loads(recipe.to_json()))
    assert again == recipe
    replayed = replay_everything(again, sharp_sam, work.rgb8)
    _same_records(replayed.kept, page.kept)
    rgb8, records = replay(again, sharp_sam, work.image)
    assert np.array_equal(rgb8, work.rgb8)
    assert np.array_equal(labels_from_records(records), labels_from_records(page.kept))


def test_prompts_recipe_replays_the_kept_objects(tiny_sam, work):
    emb = compute_embedding(tiny_sam, work.rgb8)
    point = predict_candidates(tiny_sam, emb, PromptSet(np.array([[40.0, 30.0]]), np.array([1])))
    boxes = PromptSet(
        np.array([[90.0, 60.0]]),
        np.array([0]),
        np.array([[10.0, 10, 60, 50], [70, 30, 120, 90]]),
    )
    boxed = predict_candidates(tiny_sam, emb, boxes, multimask=False, clip_to_box=False)
    objects = [*point.objects(2), *boxed.objects()]  # a picked candidate, then one per box
    recipe = prompts_recipe(work, tiny_sam, objects)
    data = json.loads(recipe.to_json())
    assert data["objects"][0]["candidate"] == 2 and data["objects"][2]["box"] == [70, 30, 120, 90]
    assert data["objects"][2]["points"] == [[90.0, 60.0]] and data["objects"][2]["labels"] == [0]
    _, records = replay(Recipe.from_dict(data), tiny_sam, work.image)
    assert len(records) == 3
    for rec, obj in zip(records, objects, strict=True):
        assert np.array_equal(rec["segmentation"], obj.mask)
        assert rec["predicted_iou"] == obj.predicted_iou


def test_tiled_prompts_recipe_replays_the_objects_made_on_tiles(tiny_sam, work):
    """Objects prompted on tiles (the Prompts page's tiles switch): masks in the image
    frame, predicted on the window's own embedding, and replayed from the recipe."""
    tiled = TiledEmbeddings.build(tiny_sam, work.rgb8, tile_size=48, halo=8)
    assert len(tiled.tiles) == 6  # 96 x 128 px: 2 x 3 tiles of 64 px windows
    prompts = PromptSet(np.array([[100.0, 70.0]]), np.array([1]))
    found = predict_candidates_tiled(tiny_sam, tiled, prompts)
    assert list(tiled.embeddings) == [5]  # only the tile the prompt needs was encoded
    x0, y0, x1, y1 = tiled.tiles[5].window
    window = compute_embedding(tiny_sam, np.ascontiguousarray(work.rgb8[y0:y1, x0:x1]))
    local = predict_candidates(
        tiny_sam, window, PromptSet(np.array([[100.0 - x0, 70.0 - y0]]), np.array([1]))
    )
    assert found.masks.shape == (1, 3, 96, 128)
    assert np.array_equal(found.masks[..., y0:y1, x0:x1], local.masks)
    assert not found.masks[..., :y0, :].any() and not found.masks[..., :, :x0].any()
    assert np.array_equal(found.scores, local.scores)
    boxed = predict_candidates_tiled(
        tiny_sam, tiled, PromptSet(np.zeros((0, 2)), np.zeros(0, int), np.array([[5.0, 5, 40, 40]]))
    )
    objects = [*found.objects(1), *boxed.objects()]
    recipe = prompts_recipe(work, tiny_sam, objects, Tiling(48, 8))
    data = json.loads(recipe.to_json())
    assert data["tiling"] == {"tile_size": 48, "halo": 8, "tile_iou_thresh": 0.5}
    _, records = replay(Recipe.from_dict(data), tiny_sam, work.image)
    assert len(records) == 2
    for rec, obj in zip(records, objects, strict=True):
        assert np.array_equal(rec["segmentation"], obj.mask)
    with pytest.raises(PromptError, match="wider than one tile window"):
        predict_candidates_tiled(
            tiny_sam, tiled, PromptSet(np.array([[5.0, 5], [120, 90]]), np.array([1, 1]))
        )


def _prompts_dict(**changes) -> dict:
    base = {
        "recipe": 1,
        "kind": "prompts",
        "model": {"name": "vit_b", "sha256": None},
        "objects": [{"points": [[1, 2]], "labels": [1]}],
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "change, match",
    [
        ({"recipe": 2}, "not a version-1 recipe"),
        ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
        ({"kind": "tiles"}, "kind must be one of"),
        ({"model": {"name": ""}}, "model.name"),
        ({"image": {"gamma": "x"}}, "image.gamma must be a number"),
        ({"image": {"gamma": -1}}, "image.gamma must be a finite number > 0"),
        ({"image": {"channels": [0, 1]}}, "image.channels"),
        ({"image": {"percentiles": [90, 10]}}, "percentiles must rise"),
        ({"image": {"plane": -1}}, "image.plane"),
        ({"image": {"pixel_size_um": 0}}, "pixel_size_um"),
        ({"objects": [{"points": [[1, 2]], "labels": [1, 0]}]}, "1 points but 2 labels"),
        ({"objects": [{"points": [[1, 2, 3]], "labels": [1]}]}, r"points must be \[\[x, y\]"),
        ({"objects": [{"box": [0, 0, 5, 5], "candidate": 7}]}, "candidate must be an integer"),
        ({"objects": [{"labels": []}]}, "needs points or a box"),
        ({"everything": {}}, "has 'objects', not 'everything'"),
        ({"tiling": {"tile_size": 8, "halo": 2}}, r"tiling.tile_size must be an integer in \[16"),
        ({"tiling": {"tile_size": 64, "halo": -1}}, "tiling.halo must be an integer"),
        ({"tiling": {"tile_size": 64, "halo": 8, "overlap": 1}}, r"unknown key\(s\) \['overlap'\]"),
    ],
)
def test_bad_recipes_are_refused_in_one_line(change, match):
    with pytest.raises(RecipeError, match=match) as info:
        Recipe.from_dict(_prompts_dict(**change))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "everything, filters, match",
    [
        ({"generator": {"points_per_side": 0}}, {}, "everything.generator: points_per_side"),
        ({"generator": {"grid": 3}}, {}, "unknown generator parameter"),
        ({"fast": "yes"}, {}, "everything.fast must be true or false"),
        ({}, {"min_area": 50, "max_area": 10}, "min_area 50 is larger than max_area 10"),
        ({}, {"box_nms_thresh": 1.5}, "filters.box_nms_thresh"),
        ({}, {"area": 3}, r"unknown key\(s\) \['area'\]"),
    ],
)
def test_bad_everything_settings_are_refused(everything, filters, match):
    data = {
        "recipe": 1,
        "kind": "everything",
        "model": {"name": "vit_b"},
        "everything": everything,
        "filters": filters,
    }
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(data)


def test_defaults_fill_what_a_hand_written_recipe_leaves_out(tmp_path):
    path = tmp_path / "params.json"
    hand_written = {
        "recipe": 1,
        "kind": "everything",
        "model": {"name": "small_cnn"},
        "everything": {},
        "filters": {"min_area": 30},
    }
    path.write_text(json.dumps(hand_written))
    recipe = read_recipe(path)
    assert recipe.image == DisplaySettings() and recipe.filters.min_area == 30
    assert recipe.everything.generator.points_per_side == 32
    path.write_text("{not json")
    with pytest.raises(RecipeError, match="not valid JSON"):
        read_recipe(path)
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        read_recipe(tmp_path / "missing.json")


def test_a_model_with_other_weights_is_warned_about(tiny_sam, work):
    model = copy.deepcopy(tiny_sam)
    recipe = prompts_recipe(work, model, [])
    model.samlib_info = type("Info", (), {"name": "m", "sha256": "a" * 64})()
    same = Recipe.from_dict({**recipe.to_dict(), "model": {"name": "m", "sha256": "a" * 64}})
    assert check_model(same, model) is None
    other = Recipe.from_dict({**recipe.to_dict(), "model": {"name": "m", "sha256": "b" * 64}})
    with pytest.warns(ModelMismatchWarning, match="not those the recipe was made with"):
        assert check_model(other, model)


LIVE_FLOATS = [f.name for f in dataclasses.fields(LiveFilters) if "float" in str(f.type)]


@pytest.mark.parametrize("name", LIVE_FLOATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_live_filters_raise(name, bad):
    assert len(LIVE_FLOATS) == 6
    with pytest.raises(RecipeError, match=rf"filters\.{name} must be a finite number") as info:
        LiveFilters(**{name: bad})
    assert "\n" not in str(info.value)
