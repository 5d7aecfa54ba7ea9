"""``python -m samlib`` end to end on a tiny checkpoint and synthetic images."""

from __future__ import annotations

import functools
import http.server
import importlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from samlib import models
from samlib.cli.parser import main
from samlib.datasets.synth import nuclei_image
from samlib.image.display import to_rgb8
from samlib.image.io import read_image
from samlib.models import embeddings
from samlib.models.arch import VIT_B
from samlib.models.embeddings import compute_embedding
from samlib.models.loading import load_model, suggested_params
from samlib.prompts.objects import PromptSet, predict_candidates, records_of
from samlib.prompts.prompting import MAX_BOXES, predict
from samlib.records.masks import labels_from_records
from samlib.records.rle import decode_coco
from samlib.tiling.tiles import segment_everything_tiled
from tests.conftest import make_disks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def scene(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMLIB_MODEL", raising=False)
    img, labels = make_disks((96, 128), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", img)
    tifffile.imwrite(tmp_path / "gt.tif", labels)
    return tmp_path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_json(scene, capsys):
    code, out, _ = _run(capsys, "check", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["device"] == str(models.pick_device())
    assert report["cache_dir"] == str(scene / "cache")
    assert {row["model"] for row in report["checkpoints"]} >= {"vit_b", "vit_l", "vit_h"}
    assert not any(row["cached"] for row in report["checkpoints"] if row["model"] == "vit_b")


def test_prompt_writes_the_predicted_masks(scene, capsys, tiny_sam, tiny_checkpoint):
    out_dir = scene / "out"
    code, out, err = _run(
        capsys,
        "prompt",
        scene / "img.tif",
        "--point",
        "40,30",
        "--point",
        "90,60,0",
        "--box",
        "20,15,62,48",
        "--box",
        "70,40,110,80",
        "--model",
        tiny_checkpoint,
        "--out",
        out_dir,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert len(summary["masks"]) == 2
    assert {p.name for p in out_dir.iterdir()} == {
        "labels.tif",
        "measurements.csv",
        "masks_coco.json",
        "params.json",
    }
    rgb = to_rgb8(read_image(scene / "img.tif"))
    prompts = dict(
        points=[[40, 30], [90, 60]], labels=[1, 0], boxes=[[20, 15, 62, 48], [70, 40, 110, 80]]
    )
    model = load_model(tiny_checkpoint, "cpu", fast_encoder=True)  # as the CLI loads it
    emb = compute_embedding(model, rgb)
    tiny_sam = model
    expected = predict(tiny_sam, emb, clip_to_box=True, **prompts).best_masks
    coco = json.loads((out_dir / "masks_coco.json").read_text())
    got = [decode_coco(a["segmentation"]).astype(bool) for a in coco["annotations"]]
    assert len(got) == 2 and all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    argv = ["prompt", scene / "img.tif", "--model", tiny_checkpoint]
    for p in ("40,30", "90,60,0"):
        argv += ["--point", p]
    for b in ("20,15,62,48", "70,40,110,80"):
        argv += ["--box", b]
    code, _, err = _run(capsys, *argv, "--no-clip-to-box", "--out", scene / "unclipped")
    assert code == 0, err
    coco = json.loads((scene / "unclipped" / "masks_coco.json").read_text())
    raw = [decode_coco(a["segmentation"]).astype(bool) for a in coco["annotations"]]
    unclipped = predict(tiny_sam, emb, **prompts).best_masks
    assert all(np.array_equal(g, e) for g, e in zip(raw, unclipped, strict=True))
    assert any((r & ~g).any() for r, g in zip(raw, got, strict=True))  # the clip did something
    unclipped_recipe = json.loads((scene / "unclipped" / "params.json").read_text())
    assert [o["clip_to_box"] for o in unclipped_recipe["objects"]] == [False, False]
    params = json.loads((out_dir / "params.json").read_text())
    assert params["kind"] == "prompts"
    assert params["model"]["sha256"] == models.file_sha256(tiny_checkpoint)
    assert params["objects"][1]["box"] == [70, 40, 110, 80]
    assert params["objects"][1]["points"] == [[40, 30], [90, 60]]
    labels = tifffile.imread(out_dir / "labels.tif")
    assert labels.shape == (96, 128) and set(np.unique(labels)) <= {0, 1, 2}


def test_prompt_records_equal_the_apps(scene, capsys, tiny_sam, tiny_checkpoint):
    # the Prompts page keeps predict_candidates' best object per box; the CLI must give the
    # same seven-key records for the same prompts
    argv = ["prompt", scene / "img.tif", "--model", tiny_checkpoint, "--out", scene / "out"]
    for p in ("40,30", "90,60,0"):
        argv += ["--point", p]
    for b in ("20,15,62,48", "70,40,110,80"):
        argv += ["--box", b]
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    rgb = to_rgb8(read_image(scene / "img.tif"))
    prompts = PromptSet(
        np.array([[40.0, 30.0], [90.0, 60.0]]),
        np.array([1, 0]),
        np.array([[20.0, 15, 62, 48], [70, 40, 110, 80]]),
    )
    model = load_model(tiny_checkpoint, "cpu", fast_encoder=True)  # as the app loads it
    emb = compute_embedding(model, rgb)
    app = records_of(predict_candidates(model, emb, prompts).objects())
    coco = json.loads((scene / "out" / "masks_coco.json").read_text())["annotations"]
    assert len(app) == len(coco) == 2
    for rec, ann in zip(app, coco, strict=True):
        assert np.array_equal(decode_coco(ann["segmentation"]), rec["segmentation"])
        for key in ("area", "bbox", "predicted_iou", "stability_score", "crop_box"):
            assert ann[key] == rec[key], key
        assert ann["point_coords"] == rec["point_coords"] == [[40.0, 30.0], [90.0, 60.0]]


def test_second_run_reuses_the_cached_embedding(scene, capsys, tiny_checkpoint, monkeypatch):
    argv = ["prompt", scene / "img.tif", "--point", "40,30", "--model", tiny_checkpoint]
    assert _run(capsys, *argv, "--out", scene / "a")[0] == 0
    assert len(list((scene / "cache" / "embeddings").glob("*.npz"))) == 1

    def no_encoder(*args, **kwargs):
        raise AssertionError("the image was encoded again")

    monkeypatch.setattr(embeddings, "compute_embedding", no_encoder)
    code, _, err = _run(capsys, *argv, "--out", scene / "b")
    assert code == 0, err
    first = (scene / "a" / "masks_coco.json").read_text()
    assert (
        json.loads(first)["annotations"]
        == json.loads((scene / "b" / "masks_coco.json").read_text())["annotations"]
    )
    code, _, err = _run(capsys, *argv, "--out", scene / "c", "--no-cache")
    assert code == 2 and "encoded again" in err  # --no-cache always encodes


def test_everything_writes_exports(scene, capsys, tiny_checkpoint):
    out_dir = scene / "every"
    code, out, err = _run(
        capsys,
        "everything",
        scene / "img.tif",
        "--model",
        tiny_checkpoint,
        "--set",
        "points_per_side=4",
        "--set",
        "pred_iou_thresh=0",
        "--set",
        "stability_score_thresh=0",
        "--keep-whole-image",
        "--min-area",
        "1",
        "--out",
        out_dir,
        "--quiet",
    )
    assert code == 0, err
    summary = json.loads(out)
    coco = json.loads((out_dir / "masks_coco.json").read_text())
    assert summary["masks"] == len(coco["annotations"]) >= 1
    params = json.loads((out_dir / "params.json").read_text())
    assert params["kind"] == "everything"
    assert params["everything"]["generator"]["points_per_side"] == 4
    assert params["filters"]["min_area"] == 1 and params["filters"]["drop_whole_image"] is False
    labels = tifffile.imread(out_dir / "labels.tif")
    assert labels.shape == (96, 128) and labels.max() <= summary["masks"]
    assert (out_dir / "measurements.csv").read_text().count("\n") == summary["masks"] + 1


def test_everything_unknown_parameter(scene, capsys, tiny_checkpoint):
    code, _, err = _run(
        capsys,
        "everything",
        scene / "img.tif",
        "--model",
        tiny_checkpoint,
        "--set",
        "points_per_sid=4",
        "--out",
        scene / "x",
    )
    assert code == 2 and "points_per_sid" in err and err.count("\n") == 1


def test_evaluate_prints_json(scene, capsys):
    gt = tifffile.imread(scene / "gt.tif")
    pred = np.roll(gt, 3, axis=1)
    tifffile.imwrite(scene / "pred.tif", pred)
    code, out, _ = _run(capsys, "evaluate", scene / "gt.tif", scene / "gt.tif")
    assert code == 0 and json.loads(out)["f1"] == 1.0
    code, out, _ = _run(capsys, "evaluate", scene / "pred.tif", scene / "gt.tif")
    result = json.loads(out)
    assert code == 0 and result["n_gt"] == 2 and 0 < result["mean_matched_iou"] < 1


CKPT = ["--model", "{ckpt}", "--out", "{tmp}/o"]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["prompt", "{img}", "--point", "500,10", *CKPT], "outside"),
        (["prompt", "{img}", *CKPT], "at least one"),
        (["prompt", "{img}", "--point", "5,5", "--model", "vit_b", "--out", "o"], "download vit_b"),
        (["prompt", "{img}", "--point", "5,5", "--model", "nope", "--out", "o"], "neither"),
        (["prompt", "{tmp}/none.tif", "--point", "5,5", *CKPT], "none.tif"),
        (["evaluate", "{img}", "{tmp}/gt_small.tif"], "differ in size"),
        (["download", "vit_q"], "unknown model"),
    ],
)
def test_errors_are_one_line(scene, capsys, tiny_checkpoint, argv, match):
    tifffile.imwrite(scene / "gt_small.tif", np.zeros((5, 5), np.uint16))
    fill = dict(img=scene / "img.tif", ckpt=tiny_checkpoint, tmp=scene)
    code, out, err = _run(capsys, *(a.format(**fill) for a in argv))
    assert code == 2
    assert err.startswith(f"samlib {argv[0]}: error: ") and err.count("\n") == 1
    assert match in err


def _samlib(*argv, cwd) -> subprocess.CompletedProcess:
    """``python -m samlib ARGV`` in a child process (the interpreter's own exit path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "samlib", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "image, model, match",
    [
        ("{img}", "{tmp}/notes.txt", "not a PyTorch checkpoint"),
        ("{img}", "/etc/passwd", "not a PyTorch checkpoint"),
        ("{tmp}/notes.png", "{ckpt}", "not a PNG, JPEG, BMP or TIFF"),
    ],
)
def test_a_text_file_as_checkpoint_or_image_is_one_line_and_status_2(
    scene, tiny_checkpoint, image, model, match
):
    (scene / "notes.txt").write_text("these are my notes\nnot a model\n")
    (scene / "notes.png").write_text("these are my notes\nnot an image\n")
    fill = dict(img=scene / "img.tif", ckpt=tiny_checkpoint, tmp=scene)
    argv = ["prompt", image, "--point", "5,5", "--model", model, "--out", "{tmp}/o"]
    proc = _samlib(*(a.format(**fill) for a in argv), cwd=scene)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("samlib prompt: error: ") and proc.stderr.count("\n") == 1
    assert match in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "exc, says",
    [
        (RuntimeError("the decoder broke\n  on two lines"), "RuntimeError: the decoder broke on"),
        (MemoryError("Unable to allocate 9.3 GiB"), "not enough memory (Unable to allocate 9.3"),
        (MemoryError(), "not enough memory; use a smaller image"),
        (KeyError("rgb"), "KeyError: 'rgb'"),
    ],
)
def test_an_unexpected_exception_is_one_line_and_status_2(scene, capsys, monkeypatch, exc, says):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr("samlib.image.io.read_image", broken)
    code, out, err = _run(capsys, "everything", scene / "img.tif", "--out", scene / "o")
    assert code == 2
    assert err.startswith("samlib everything: error: ") and err.count("\n") == 1
    assert says in err


def test_an_interrupted_command_is_one_line_and_status_130(scene, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("samlib.image.io.read_image", interrupted)
    code, out, err = _run(capsys, "evaluate", scene / "img.tif", scene / "gt.tif")
    assert (code, err) == (130, "samlib evaluate: interrupted\n")


def test_bad_point_syntax_is_a_usage_error(scene, capsys):
    with pytest.raises(SystemExit) as info:
        main(["prompt", str(scene / "img.tif"), "--point", "1,2,7", "--out", str(scene)])
    assert info.value.code == 2
    assert "label must be 1" in capsys.readouterr().err


def test_download_shows_progress(scene, capsys, monkeypatch):
    (scene / "srv").mkdir()
    payload = os.urandom(3000)
    (scene / "srv" / "w.pth").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=scene / "srv")
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        entry = models.ModelEntry(
            "cli_test",
            VIT_B,
            f"http://127.0.0.1:{server.server_address[1]}/w.pth",
            3000,
            None,
            "test",
            "sam",
            "cli_test.pth",
        )
        monkeypatch.setitem(models.REGISTRY, "cli_test", entry)
        code, out, err = _run(capsys, "download", "cli_test")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    assert Path(out.strip()).read_bytes() == payload
    assert "100.0%" in err and "cli_test" in err


@pytest.mark.parametrize(
    "command, module",
    [("train", "samlib.training.loop"), ("evaluate-model", "samlib.evaluation.benchmark")],
)
def test_delegated_subcommands(monkeypatch, command, module):
    seen = []
    monkeypatch.setattr(
        importlib.import_module(module), "main", lambda argv: seen.append(argv) or 7
    )
    assert main([command, "a.tif", "--model", "x"]) == 7
    assert seen == [["a.tif", "--model", "x"]]


def test_module_entry_point_exit_status(scene, tiny_checkpoint):
    proc = _samlib("evaluate", scene / "nothing.tif", "gt.tif", cwd=scene)
    assert proc.returncode == 2
    assert proc.stderr.startswith("samlib evaluate: error:") and proc.stderr.count("\n") == 1


def test_everything_starts_from_the_models_suggested_thresholds(scene, capsys):
    out_dir = scene / "every_small"
    code, _, err = _run(
        capsys,
        "everything",
        scene / "img.tif",
        "--model",
        "small_cnn",
        "--set",
        "points_per_side=4",
        "--set",
        "stability_score_thresh=0.42",
        "--out",
        out_dir,
        "--quiet",
    )
    assert code == 0, err
    used = json.loads((out_dir / "params.json").read_text())["everything"]["generator"]
    suggested = suggested_params("small_cnn")
    assert used["stability_score_thresh"] == 0.42  # --set wins
    for key, value in suggested.items():
        if key != "stability_score_thresh":
            assert used[key] == value


def test_everything_params_json_replays_to_the_same_labels(scene, capsys, tiny_checkpoint):
    base = ["everything", scene / "img.tif", "--model", tiny_checkpoint, "--quiet"]
    settings = ["--set", "points_per_side=4", "--set", "pred_iou_thresh=0", "--set"]
    settings += ["stability_score_thresh=0", "--keep-whole-image", "--min-area", "1"]
    code, _, err = _run(capsys, *base, *settings, "--out", scene / "a")
    assert code == 0, err
    recipe = scene / "a" / "params.json"
    code, _, err = _run(capsys, *base, "--recipe", recipe, "--out", scene / "b", "--no-cache")
    assert code == 0 and err == ""
    first, again = (tifffile.imread(scene / d / "labels.tif") for d in ("a", "b"))
    assert np.array_equal(first, again) and first.max() > 0
    replayed = json.loads((scene / "b" / "params.json").read_text())
    assert {k: v for k, v in replayed.items() if k != "provenance"} == {
        k: v for k, v in json.loads(recipe.read_text()).items() if k != "provenance"
    }


def test_everything_in_tiles_equals_the_library_and_its_recipe_replays(scene, capsys):
    img = np.tile(nuclei_image(3, 256)[0], (2, 2))[:500, :450]  # 2 x 3 tiles
    tifffile.imwrite(scene / "big.tif", img)
    base = ["everything", scene / "big.tif", "--model", "small_cnn", "--device", "cpu", "--quiet"]
    settings = ["--set", "points_per_side=8", "--keep-whole-image", "--tiles", "200,28"]
    code, _, err = _run(capsys, *base, *settings, "--out", scene / "a")
    assert code == 0, err
    recipe = json.loads((scene / "a" / "params.json").read_text())
    assert recipe["tiling"] == {"tile_size": 200, "halo": 28, "tile_iou_thresh": 0.5}
    model = load_model("small_cnn", "cpu", fast_encoder=True)
    lib = segment_everything_tiled(
        model,
        to_rgb8(img),
        tile_size=200,
        halo=28,
        points_per_side=8,
        **suggested_params("small_cnn"),
    )
    labels = tifffile.imread(scene / "a" / "labels.tif")
    assert labels.max() == len(lib) > 10
    assert np.array_equal(labels, labels_from_records(lib))
    code, _, err = _run(
        capsys, *base, "--recipe", scene / "a" / "params.json", "--out", scene / "b"
    )
    assert code == 0, err
    assert np.array_equal(tifffile.imread(scene / "b" / "labels.tif"), labels)
    with pytest.raises(SystemExit) as info:
        _run(capsys, *base, "--tiles", "8,2", "--out", scene / "c")
    assert info.value.code == 2
    assert "--tiles needs whole pixels, a tile size >= 16" in capsys.readouterr().err


def test_recipe_errors_and_the_model_hash_warning(scene, capsys, tiny_checkpoint):
    base = ["everything", scene / "img.tif", "--model", tiny_checkpoint, "--quiet"]
    assert _run(capsys, *base, "--set", "points_per_side=4", "--out", scene / "a")[0] == 0
    recipe = json.loads((scene / "a" / "params.json").read_text())
    path = scene / "params.json"
    path.write_text(json.dumps(recipe))
    extra = ["--set", "points_per_side=8"]
    code, _, err = _run(capsys, *base, "--recipe", path, *extra, "--out", scene / "x")
    assert code == 2 and "--set cannot go with --recipe" in err
    code, _, err = _run(capsys, "prompt", scene / "img.tif", "--recipe", path, "--out", scene / "x")
    assert code == 2 and "segment-everything recipe: replay it with `samlib everything`" in err
    path.write_text(json.dumps({**recipe, "recipe": 7}))
    code, _, err = _run(capsys, *base, "--recipe", path, "--out", scene / "x")
    assert code == 2 and "not a version-1 recipe" in err and err.count("\n") == 1
    code, _, err = _run(capsys, *base, "--export", "labels_tiff,gif", "--out", scene / "x")
    assert code == 2 and "unknown export formats ['gif']" in err
    other = {**recipe, "model": {"name": "tiny", "sha256": "0" * 64}}
    path.write_text(json.dumps(other))
    code, _, err = _run(capsys, *base, "--recipe", path, "--out", scene / "w")
    assert code == 0 and err.startswith("samlib: warning: the model's weights")
    quiet = ["--ignore-model-hash", "--out", scene / "v"]
    code, _, err = _run(capsys, *base, "--recipe", path, *quiet)
    assert code == 0 and err == ""
    del base[2:4]  # no --model: the recipe names a model that is not here
    code, _, err = _run(capsys, *base, "--recipe", path, "--out", scene / "u")
    assert code == 2 and "give the recipe's model with --model" in err


def test_a_small_compressed_file_that_would_need_gigabytes_is_refused(scene, capsys):
    # 100 million zero pixels: about 100 KB as a zlib TIFF, 2.2 GiB to convert for SAM
    tifffile.imwrite(scene / "bomb.tif", np.zeros((10_000, 10_000), np.uint8), compression="zlib")
    assert (scene / "bomb.tif").stat().st_size < 2**20
    code, _, err = _run(capsys, "everything", scene / "bomb.tif", "--out", scene / "o")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("samlib everything: error: bomb.tif: converting its 10000 x 10000 px")
    assert "limit of 2.0 GiB" in err
    assert not (scene / "o").exists()


def test_too_many_boxes_in_one_command_are_one_line(scene, capsys, tiny_checkpoint):
    boxes = [a for i in range(MAX_BOXES + 1) for a in ("--box", f"{i % 90},5,{i % 90 + 20},40")]
    argv = ["prompt", scene / "img.tif", *boxes, "--model", tiny_checkpoint, "--out", scene / "o"]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"samlib prompt: error: {MAX_BOXES + 1} boxes in one call, more than")
