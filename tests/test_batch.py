"""Batch runs: a recipe over many images, here and on a Dask LocalCluster, resumable."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from distributed import Client, LocalCluster, get_task_stream

from samlib.batch import (
    NOTHING_DONE,
    SOME_FAILED,
    ModelSpec,
    find_images,
    output_names,
    run_batch,
)
from samlib.batch import workers as batch_workers
from samlib.batch.tiled import segment_everything_tiled_on
from samlib.cli.parser import main
from samlib.datasets.synth import nuclei_image
from samlib.errors import ParameterError, RecipeError
from samlib.everything.params import GeneratorParams
from samlib.image.display import to_rgb8
from samlib.image.io import read_image
from samlib.models.loading import load_model, suggested_params
from samlib.recipe import EverythingSettings, LiveFilters, ModelRef, Recipe, Tiling, replay
from samlib.records.masks import labels_from_records
from samlib.tiling.tiles import segment_everything_tiled

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
MODEL = ModelSpec("small_cnn", "cpu")


def _recipe() -> Recipe:
    gen = GeneratorParams(points_per_side=8, **suggested_params("small_cnn"))
    return Recipe(
        kind="everything",
        model=ModelRef("small_cnn"),
        everything=EverythingSettings(gen, iou_floor=0.5, stability_floor=0.5),
        filters=LiveFilters.from_generator(gen, min_area=20),
    )


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLIB_NO_DISK_CACHE", "1")
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "plate"
    folder.mkdir()
    for i in range(8):
        img, _ = nuclei_image(100 + i, 128)
        tifffile.imwrite(folder / f"well_{i}.tif", img)
    return folder


def _labels(out, name):
    return tifffile.imread(out / name / "labels.tif")


def test_find_images_expands_files_folders_and_patterns(images, tmp_path):
    (images / "notes.txt").write_text("not an image")
    (images / "sub").mkdir()
    tifffile.imwrite(images / "sub" / "deep.tif", np.zeros((8, 8), np.uint8))
    found = find_images([str(images)])
    assert [p.name for p in found] == [f"well_{i}.tif" for i in range(8)]
    assert len(find_images([str(images)], recursive=True)) == 9
    assert len(find_images([str(images / "well_[01].tif"), str(images / "well_0.tif")])) == 2
    assert [p.name for p in find_images([str(images)], pattern="*_7.tif")] == ["well_7.tif"]
    with pytest.raises(ParameterError, match="no image found for"):
        find_images([str(tmp_path / "nothing*.tif")])
    a, b = tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"
    names = output_names([a, b])
    assert names[a] != names[b] and all(n.startswith("x-") for n in names.values())


def test_a_batch_writes_what_the_recipe_gives_each_image(images, tmp_path):
    out = tmp_path / "out"
    paths = find_images([str(images)])
    report = run_batch(paths[:3], _recipe(), out, model=MODEL, formats=["coco"])
    assert report.exit_status == 0 and report.skipped == 0
    model = load_model("small_cnn", "cpu", fast_encoder=True)
    counts = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the batch ran it: the same sums, the same bits
    try:
        replays = [replay(_recipe(), model, read_image(p)) for p in paths[:3]]
    finally:
        torch.set_num_threads(threads)
    for p, (rgb, records) in zip(paths[:3], replays, strict=True):
        want = labels_from_records(records, shape=rgb.shape[:2])
        assert np.array_equal(_labels(out, p.stem), want)
        files = {f.name for f in (out / p.stem).iterdir()}
        assert files == {"labels.tif", "measurements.csv", "params.json", "masks_coco.json"}
        counts.append(len(records))
    assert sum(counts) > 3
    objects = pd.read_parquet(out / "objects.parquet")
    assert objects["image"].value_counts().to_dict() == {
        p.stem: c for p, c in zip(paths[:3], counts, strict=True) if c
    }
    assert len(pd.read_csv(out / "objects.csv")) == len(objects)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["n_masks"].tolist() == counts and set(summary["status"]) == {"done"}
    assert (summary["coverage"] > 0).all() and summary["median_area_px"].notna().all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["kind"] == "everything" and manifest["finished"]
    assert manifest["status"] == {"done": 3, "failed": 0}
    assert set(manifest["images"]) == {p.stem for p in paths[:3]}


def test_bad_images_fail_alone_and_a_second_run_resumes(images, tmp_path, monkeypatch):
    folder = tmp_path / "mixed"
    folder.mkdir()
    os.link(images / "well_0.tif", folder / "good.tif")
    tifffile.imwrite(
        folder / "two_channels.tif",
        np.stack([nuclei_image(7, 96)[0]] * 2),
        metadata={"axes": "CYX"},
    )
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    paths = find_images([str(folder)])
    report = run_batch(paths, _recipe(), out, model=MODEL)
    assert report.exit_status == SOME_FAILED
    status = {r.name: (r.status, r.error) for r in report.results}
    assert status["good"][0] == status["two_channels"][0] == "done"
    assert status["empty"] == ("failed", "empty.tif: the file is empty")
    assert status["broken"][0] == "failed" and "broken.png" in status["broken"][1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["empty"]["error"] == "empty.tif: the file is empty"
    assert manifest["status"] == {"done": 2, "failed": 2}

    # again: the done images are skipped without a model; the failed ones are tried again
    def no_model(*a, **k):
        raise AssertionError("a model was loaded for an image already done")

    monkeypatch.setattr(batch_workers, "load_model", no_model)
    monkeypatch.setattr(batch_workers, "_MODELS", {})
    some = [p for p in paths if p.name != "empty.tif"]
    again = run_batch(some, _recipe(), out, model=MODEL)
    assert again.skipped == 2 and [r.name for r in again.results if r.status == "failed"] == [
        "broken"
    ]
    empty = [p for p in paths if p.name == "empty.tif"]
    assert run_batch(empty, _recipe(), out, model=MODEL).exit_status == NOTHING_DONE
    with pytest.raises(RecipeError, match="segment-everything"):
        run_batch(paths, Recipe(kind="prompts", model=ModelRef("small_cnn")), out, model=MODEL)


@pytest.mark.slow
def test_two_dask_workers_give_the_sequential_outputs_and_survive_a_killed_worker(images, tmp_path):
    paths = find_images([str(images)])
    run_batch(paths, _recipe(), tmp_path / "seq", model=MODEL)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with cluster, Client(cluster) as client:
        started = threading.Event()
        box = {}

        def progress(done, total, result):
            started.set()

        def run():
            box["report"] = run_batch(
                paths, _recipe(), tmp_path / "dask", model=MODEL, client=client, progress=progress
            )

        thread = threading.Thread(target=run)
        thread.start()
        assert started.wait(120)
        victim = next(iter(cluster.workers.values()))
        os.kill(victim.process.process.pid, signal.SIGKILL)  # a worker dies mid-run
        thread.join(300)
        assert not thread.is_alive()
    report = box["report"]
    assert report.exit_status == 0 and len(report.results) == 8
    assert len({r.worker for r in report.results}) >= 2  # the work was spread
    for p in paths:
        assert np.array_equal(_labels(tmp_path / "dask", p.stem), _labels(tmp_path / "seq", p.stem))
    seq = pd.read_parquet(tmp_path / "seq" / "objects.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask" / "objects.parquet"), seq)


def test_batch_command_line(images, tmp_path, capsys):
    recipe = tmp_path / "params.json"
    recipe.write_text(_recipe().to_json())
    argv = ["batch", str(images / "well_[0-2].tif"), "--recipe", str(recipe)]
    argv += ["--out", str(tmp_path / "out"), "--workers", "0", "--export", "rois"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["done"] == 3 and summary["failed"] == 0
    assert (tmp_path / "out" / "well_1" / "rois_imagej.zip").is_file()
    assert main(argv) == 0  # resumed: nothing to do
    assert json.loads(capsys.readouterr().out)["skipped"] == 3
    code = main([*argv[:4], "--out", str(tmp_path / "x"), "--model", "vit_q"])
    assert code == 2 and "give the recipe's model with --model" in capsys.readouterr().err
    code = main([*argv[:4], "--out", str(tmp_path / "x"), "--model", "vit_h"])  # not cached
    assert code == 2 and "run `samlib download vit_h`" in capsys.readouterr().err
    other = json.loads(recipe.read_text())
    other["model"]["sha256"] = "0" * 64
    recipe.write_text(json.dumps(other))
    assert main([*argv[:4], "--out", str(tmp_path / "w"), "--workers", "0", "--quiet"]) == 0
    assert capsys.readouterr().err.startswith("samlib: warning: the model's weights")


@pytest.mark.slow
def test_a_huge_image_through_dask_tiles_equals_the_single_process_tiled_result():
    img, _ = nuclei_image(3, 256)
    big = np.tile(img, (3, 3))[:700, :650]  # several tiles of the demo model's input
    rgb = to_rgb8(big)
    params = dict(points_per_side=8, **suggested_params("small_cnn"))
    model = load_model("small_cnn", "cpu", fast_encoder=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = segment_everything_tiled(model, rgb, tile_size=200, halo=28, **params)
    finally:
        torch.set_num_threads(threads)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    done = []
    with cluster, Client(cluster) as client:
        spread = segment_everything_tiled_on(
            client,
            MODEL,
            rgb,
            tile_size=200,
            halo=28,
            progress=lambda d, t: done.append(t),
            **params,
        )
    assert len(done) == 16 and len(here) > 10
    assert len(spread) == len(here)
    for a, b in zip(spread, here, strict=True):
        assert a == b


def test_a_tiled_recipe_runs_each_tile_as_a_task_and_equals_the_sequential_batch(tmp_path):
    """A batch of a tiled recipe: on Dask the big image's tiles are tasks of their own, and
    every output equals the one-process batch's (which runs the tiles one by one)."""
    folder = tmp_path / "slides"
    folder.mkdir()
    img, _ = nuclei_image(3, 256)
    tifffile.imwrite(folder / "big.tif", np.tile(img, (3, 3))[:700, :650])
    tifffile.imwrite(folder / "small.tif", nuclei_image(4, 128)[0])  # one window: untiled
    recipe = dataclasses.replace(_recipe(), tiling=Tiling(200, 28))
    paths = find_images([str(folder)])
    here = run_batch(paths, recipe, tmp_path / "here", model=MODEL)
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    with cluster, Client(cluster) as client, get_task_stream(client) as stream:
        spread = run_batch(paths, recipe, tmp_path / "spread", model=MODEL, client=client)
    assert here.exit_status == spread.exit_status == 0
    tile_tasks = [t for t in stream.data if t["key"].startswith("_tile_task")]
    assert len(tile_tasks) == 16  # the big image's 4 x 4 tiles; the small one has none
    assert len({t["worker"] for t in tile_tasks}) == 2
    for name, least in (("big", 10), ("small", 1)):
        labels = _labels(tmp_path / "here", name)
        assert labels.max() >= least
        assert np.array_equal(_labels(tmp_path / "spread", name), labels)
    params = json.loads((tmp_path / "spread" / "big" / "params.json").read_text())
    assert params["tiling"] == {"tile_size": 200, "halo": 28, "tile_iou_thresh": 0.5}
