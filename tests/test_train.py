"""Training mechanics on tiny models, the small CNN encoder, and model evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from segment_anything import SamPredictor
from torch.nn import functional as F

from samlib.cli.parser import main as samlib_main
from samlib.datasets.synth import nuclei_image, synth_image
from samlib.errors import ParameterError
from samlib.evaluation import benchmark
from samlib.evaluation.benchmark import (
    evaluate_model,
    grow_boxes,
    object_prompts,
    prompt_ious,
    window_iou,
)
from samlib.image.display import to_rgb8
from samlib.models.arch import ENCODERS, SamConfig, build_sam
from samlib.models.loading import REGISTRY, checkpoint_path, load_model, save_checkpoint
from samlib.models.small_encoder import SMALL_CNN
from samlib.tiling.prompts import TiledEmbeddings, predict_tiled
from samlib.training import loop
from samlib.training.loop import TrainParams, train
from samlib.training.prompts import (
    correction_points,
    dice_loss,
    focal_loss,
    jitter_boxes,
    mask_iou,
    prepare_sample,
    sam_loss,
    sample_points,
)
from samlib.training.step import choose_instances
from tests.conftest import make_disks

# A CNN-encoder SAM small enough to train for a few steps in a second or two.
TINY_CNN = SamConfig(
    encoder="cnn",
    img_size=64,
    patch_size=4,
    embed_dim=16,
    depth=1,
    num_heads=1,
    global_attn_indexes=(),
    window_size=0,
    prompt_embed_dim=16,
    mask_in_chans=4,
    decoder_mlp_dim=32,
    decoder_num_heads=2,
    iou_head_hidden_dim=16,
    encoder_options={"widths": [8, 16, 16], "depth": 1},
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Training loops run many small ops: one thread is much faster on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return build_sam(TINY_CNN)


def _pairs(n, seed=0, shape=(64, 64)):
    return [
        synth_image(seed + i, shape, kind="fluorescence", n_objects=6, radius=(6, 9))
        for i in range(n)
    ]


def test_cnn_encoder_is_registered_and_gives_sam_embeddings():
    assert "cnn" in ENCODERS
    model = build_sam(SMALL_CNN)
    assert model.image_encoder.img_size == 256
    with torch.no_grad():
        out = model.image_encoder(torch.zeros(2, 3, 256, 256))
    assert out.shape == (2, SMALL_CNN.prompt_embed_dim, 64, 64)
    assert model.prompt_encoder.image_embedding_size == (64, 64)


def test_cnn_config_round_trips_through_dict():
    assert SamConfig.from_dict(SMALL_CNN.to_dict()) == SMALL_CNN


def test_prepare_sample_resizes_and_pads(tiny_cnn):
    # 32 x 64 image -> 32 x 64 input (already 64 on the long side), padded to 64 x 64.
    img, lab = make_disks(shape=(32, 64), disks=((15, 20, 8), (16, 45, 6)))
    s = prepare_sample(tiny_cnn, img, lab)
    assert s.x.shape == (3, 64, 64)
    assert s.labels.shape == (64, 64)
    assert (s.labels[32:] == 0).all()
    np.testing.assert_array_equal(s.labels[:32], lab)
    np.testing.assert_array_equal(s.ids, [1, 2])
    rows, cols = np.nonzero(lab == 1)
    np.testing.assert_array_equal(s.boxes[0], [cols.min(), rows.min(), cols.max(), rows.max()])
    np.testing.assert_array_equal(s.interior[0], [20, 15])  # its centre, XY
    assert s.low.shape == (64, 64)


def test_prepare_sample_downscales_labels_with_the_image(tiny_cnn):
    img, lab = make_disks(shape=(128, 128), disks=((40, 40, 16),))
    s = prepare_sample(tiny_cnn, img, lab)
    assert abs((s.labels == 1).sum() - (lab == 1).sum() / 4) < 20


def test_prepare_sample_refuses_mismatched_labels(tiny_cnn):
    img, lab = make_disks(shape=(32, 64))
    with pytest.raises(ParameterError, match="labels"):
        prepare_sample(tiny_cnn, img, lab[:, :10])
    with pytest.raises(ParameterError, match="integer"):
        prepare_sample(tiny_cnn, img, lab.astype(float))


def test_prepare_sample_marks_instances_that_touch_another(tiny_cnn):
    # Disks 1 and 2 overlap (centres 14 px apart, radii 8); disk 3 stands alone.
    img, lab = make_disks(shape=(64, 64), disks=((15, 15, 8), (15, 29, 8), (45, 45, 6)))
    s = prepare_sample(tiny_cnn, img, lab)
    np.testing.assert_array_equal(s.ids, [1, 2, 3])
    np.testing.assert_array_equal(s.touching, [True, True, False])


def test_touching_weight_draws_touching_instances_more_often(tiny_cnn):
    disks = ((10, 10, 5), (10, 19, 5), (40, 10, 5), (40, 30, 5), (40, 50, 5), (55, 55, 5))
    s = prepare_sample(tiny_cnn, *make_disks(shape=(64, 64), disks=disks))
    assert s.touching.sum() == 2

    def touching_share(weight):
        rng = np.random.default_rng(0)
        chosen = [choose_instances(s, 2, weight, rng) for _ in range(400)]
        assert all(len(set(c)) == 2 for c in chosen)  # distinct instances
        return s.touching[np.concatenate(chosen)].mean()

    uniform, weighted = touching_share(1.0), touching_share(4.0)
    assert abs(uniform - 2 / 6) < 0.05
    assert weighted > uniform + 0.2


def test_sampled_points_fall_inside_their_objects(tiny_cnn):
    img, lab = make_disks(shape=(64, 64), disks=((15, 20, 8), (40, 45, 6)))
    s = prepare_sample(tiny_cnn, img, lab)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = sample_points(s, np.array([1, 0]), rng)
        x, y = pts[:, 0].astype(int).T
        np.testing.assert_array_equal(s.labels[y, x], [2, 1])


def test_jittered_boxes_stay_close_and_inside():
    boxes = np.array([[10, 10, 30, 20]] * 200, dtype=np.float32)
    out = jitter_boxes(boxes, np.random.default_rng(0), size=64)
    assert (out >= 0).all() and (out <= 63).all()
    assert np.abs(out - boxes).max() <= 4.0 + 1e-6  # 20% of the side (20 px) caps at 4
    assert np.abs(out - boxes).mean() > 0.1


def test_correction_click_lands_in_the_error_region():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    pred = target.clone()
    pred[0, 2, 2] = False  # one missed pixel -> positive click there
    pred[1, 7, 7] = True  # one false pixel -> negative click there
    pts, lab = correction_points(pred, target, np.random.default_rng(0), scale=4.0)
    np.testing.assert_allclose(pts[:, 0], [[9.5, 9.5], [29.5, 29.5]])
    np.testing.assert_array_equal(lab[:, 0], [1, 0])


def test_losses_are_small_for_right_and_large_for_wrong_logits():
    target = torch.zeros(1, 16, 16)
    target[0, 4:12, 4:12] = 1
    right = (target * 2 - 1) * 20
    assert focal_loss(right, target).item() < 1e-6
    assert dice_loss(right, target).item() < 1e-3
    assert focal_loss(-right, target).item() > 1.0
    assert dice_loss(-right, target).item() > 0.99


def test_sam_loss_adds_cross_entropy_when_asked():
    target = torch.zeros(2, 8, 8, dtype=torch.bool)
    target[:, 2:6, 2:6] = True
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    iou = torch.full((2, 3), 0.5)
    t = target[:, None].expand_as(logits).float()
    dice = dice_loss(logits, t)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((-2, -1))
    real = mask_iou(logits > 0, t > 0.5)
    for w in (0.0, 1.0, 3.0):
        loss, best = sam_loss(logits, iou, target, focal_weight=0.0, bce_weight=w)
        per = dice + w * bce
        np.testing.assert_array_equal(best.numpy(), per.argmin(1).numpy())
        want = per.min(1).values.mean() + F.mse_loss(iou, real)
        assert loss.item() == pytest.approx(want.item(), rel=1e-6)


def test_short_training_learns_and_writes_a_loadable_checkpoint(tiny_cnn, tmp_path):
    torch.manual_seed(0)
    params = TrainParams(epochs=5, steps_per_epoch=6, lr=3e-3, warmup_steps=2, n_prompts=6)
    out = tmp_path / "tiny.pt"
    res = train(
        tiny_cnn,
        _pairs(3),
        _pairs(1, seed=50),
        out,
        params,
        config=TINY_CNN,
        base_model="tiny",
        data={"kind": "test"},
        progress=None,
    )
    assert res.history[-1]["loss"] < 0.7 * res.history[0]["loss"]
    assert res.checkpoint == out and out.is_file()
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["base_model"] == "tiny"
    assert side["params"]["epochs"] == 5
    assert side["metrics"]["best_val_iou"] == pytest.approx(res.best_val_iou)
    loaded = load_model(out, device="cpu")
    assert loaded.samlib_info.config == TINY_CNN
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, tiny_cnn.state_dict()[k])


def _improving_validation(monkeypatch):
    """Make every epoch 'improve' so that train() keeps the last weights."""
    calls = iter(range(1000))

    def fake(*_args, **_kwargs):
        v = next(calls) / 1000
        return {"point_iou": v, "box_iou": v, "val_iou": v}

    monkeypatch.setattr("samlib.training.loop.validate", fake)


def test_frozen_encoder_is_untouched(tiny_cnn, tmp_path, monkeypatch):
    _improving_validation(monkeypatch)
    enc = {k: v.clone() for k, v in tiny_cnn.image_encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in tiny_cnn.mask_decoder.state_dict().items()}
    params = TrainParams(epochs=2, steps_per_epoch=2, lr=1e-3, n_prompts=2)
    res = train(
        tiny_cnn, _pairs(2), _pairs(1, 9), tmp_path / "a.pt", params, config=TINY_CNN, progress=None
    )
    assert res.best_epoch == 2
    for k, v in tiny_cnn.image_encoder.state_dict().items():
        torch.testing.assert_close(v, enc[k])
    assert any(not torch.equal(v, dec[k]) for k, v in tiny_cnn.mask_decoder.state_dict().items())


def test_unfrozen_encoder_learns(tiny_cnn, tmp_path, monkeypatch):
    _improving_validation(monkeypatch)
    w0 = tiny_cnn.image_encoder.stem[0][0].weight.detach().clone()
    params = TrainParams(epochs=1, steps_per_epoch=2, lr=1e-3, n_prompts=2, freeze_encoder=False)
    train(
        tiny_cnn, _pairs(2), _pairs(1, 9), tmp_path / "b.pt", params, config=TINY_CNN, progress=None
    )
    assert not torch.equal(tiny_cnn.image_encoder.stem[0][0].weight, w0)


def test_training_refuses_bad_input(tiny_cnn, tmp_path):
    with pytest.raises(ParameterError, match="validation"):
        train(tiny_cnn, _pairs(1), [], tmp_path / "x.pt", config=TINY_CNN, progress=None)
    with pytest.raises(ParameterError, match="touching_weight"):
        TrainParams(touching_weight=0).check()
    with pytest.raises(ParameterError, match="epochs"):
        train(
            tiny_cnn,
            _pairs(1),
            _pairs(1),
            tmp_path / "x.pt",
            TrainParams(epochs=0),
            config=TINY_CNN,
            progress=None,
        )


# -- evaluation ------------------------------------------------------------------------
def test_object_prompts_find_centres_and_tight_boxes():
    _, lab = make_disks(shape=(64, 96), disks=((20, 30, 10), (40, 70, 6)))
    ids, pts, boxes = object_prompts(lab)
    np.testing.assert_array_equal(ids, [1, 2])
    np.testing.assert_array_equal(pts, [[30, 20], [70, 40]])
    for i in (1, 2):
        rows, cols = np.nonzero(lab == i)
        np.testing.assert_array_equal(
            boxes[i - 1], [cols.min(), rows.min(), cols.max(), rows.max()]
        )


@pytest.fixture(scope="module")
def bundled():
    return load_model("small_cnn", device="cpu")


def test_bundled_model_is_registered_as_a_demo_model():
    entry = REGISTRY["small_cnn"]
    assert entry.package_file and entry.url is None
    assert "not SAM" in entry.description
    assert checkpoint_path("small_cnn").stat().st_size < 25 * 2**20


def test_bundled_model_works_with_sam_predictor(bundled):
    img, lab = make_disks(shape=(200, 240), disks=((60, 70, 14), (140, 170, 18)))
    rgb = np.repeat((img // 2 + 20)[..., None], 3, axis=2)
    predictor = SamPredictor(bundled)
    predictor.set_image(rgb)
    assert predictor.features.shape == (1, SMALL_CNN.prompt_embed_dim, 64, 64)
    masks, scores, low = predictor.predict(np.array([[70, 60]]), np.array([1]))
    assert masks.shape == (3, 200, 240) and masks.dtype == bool
    assert low.shape == (3, 256, 256)
    assert np.isfinite(scores).all()
    masks, _, _ = predictor.predict(box=np.array([50, 40, 90, 80]), multimask_output=False)
    assert masks.shape == (1, 200, 240)


def test_bundled_model_segments_unseen_synthetic_nuclei(bundled):
    """The trained weights follow prompts (random weights score near 0 here)."""
    img, lab = nuclei_image(9_000_001)  # a seed far from training and validation
    res = prompt_ious(bundled, to_rgb8(img), lab)
    assert res["point_miou"] > 0.75 and res["box_miou"] > 0.75


LOOSE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def test_bundled_model_runs_everything_and_evaluation(bundled):
    img, lab = synth_image(123, (96, 96), kind="fluorescence", n_objects=8, radius=(7, 10))
    res = evaluate_model(bundled, to_rgb8(img), lab, **LOOSE)
    assert res["n_gt"] == lab.max()
    assert res["n_pred_unfiltered"] > 0  # thresholds at 0: every grid point gives a mask
    for key in ("point_miou", "box_miou", "box_miou_unclipped", "ap50", "ap_mean", "f1"):
        assert 0.0 <= res[key] <= 1.0
    # Pixels outside an object's tight box are all false positives: dropping them cannot
    # lower its IoU, and with the demo model's masks it raises some.
    assert res["box_miou"] > res["box_miou_unclipped"]
    loose = evaluate_model(bundled, to_rgb8(img), lab, box_margin=4, **LOOSE)
    assert loose["box_margin"] == 4 and loose["point_miou"] == res["point_miou"]
    assert loose["box_miou_unclipped"] != res["box_miou_unclipped"]  # other box prompts


def test_grow_boxes_widens_within_the_image():
    boxes = np.array([[0, 5, 10, 20], [50, 60, 95, 79]], np.float32)
    assert grow_boxes(boxes, 3, (80, 96)).tolist() == [[0, 2, 13, 23], [47, 57, 95, 79]]


def test_tiled_evaluation_of_an_image_that_fits_one_window_is_the_plain_one(bundled):
    img, lab = synth_image(7, (256, 256), kind="fluorescence", n_objects=10, radius=(8, 12))
    plain = evaluate_model(bundled, to_rgb8(img), lab, **LOOSE)
    tiled = evaluate_model(bundled, to_rgb8(img), lab, tiled=True, tile_size=256, **LOOSE)
    assert tiled["tiles"] == 1 and tiled["tiled"] and not plain["tiled"]
    for key in ("point_miou", "box_miou", "ap50", "ap_mean", "n_pred"):
        assert tiled[key] == pytest.approx(plain[key], abs=1e-6), key


def test_tiled_prompt_ious_score_whole_objects_across_tiles(bundled):
    """The window-frame IoU equals the IoU of the full-image mask, on every tile."""

    img, lab = synth_image(8, (400, 400), kind="fluorescence", n_objects=30, radius=(6, 10))
    rgb8 = to_rgb8(img)
    res = evaluate_model(bundled, rgb8, lab, tiled=True, **LOOSE)
    assert res["tiles"] > 1 and res["n_gt"] == lab.max()
    assert res["point_miou"] > 0.5 and res["box_miou"] > 0.5  # trained weights follow prompts
    tiled = TiledEmbeddings.build(bundled, rgb8)
    ids, points, _ = object_prompts(lab)
    used = set()
    for i, point in zip(ids, points, strict=True):
        out = predict_tiled(bundled, tiled, points=point[None], labels=[1])
        used.add(out.tile.window)
        full = out.mask(0)
        gt = lab == i
        expect = (full & gt).sum() / (full | gt).sum()
        got = window_iou(out.result.masks[0, 0], out.tile.window, lab, i, gt.sum())
        assert got == pytest.approx(expect)
    assert len(used) > 1
    # An object wider than any window: the part outside the window counts as missed.
    big = np.zeros((400, 400), np.int32)
    big[120:280, 40:360] = 1
    tiled = TiledEmbeddings.build(bundled, to_rgb8((big * 30000).astype(np.uint16)))
    out = predict_tiled(bundled, tiled, points=[[200, 200]], labels=[1])
    k = int(np.argmax([out.mask(j).sum() for j in range(3)]))
    full, gt = out.mask(k), big == 1
    x0, y0, x1, y1 = out.tile.window
    assert gt[y0:y1, x0:x1].sum() < gt.sum()  # the window does not hold it all
    expect = (full & gt).sum() / (full | gt).sum()
    got = window_iou(out.result.masks[0, k], out.tile.window, big, 1, gt.sum())
    assert expect > 0 and got == pytest.approx(expect)


def test_evaluate_model_command_line_checks_tiling_options(tmp_path, capsys):
    img, lab = synth_image(9, (64, 64), kind="fluorescence", n_objects=3, radius=(6, 8))
    tifffile.imwrite(tmp_path / "im.tif", img)
    tifffile.imwrite(tmp_path / "lab.tif", lab.astype(np.uint16))
    files = [str(tmp_path / "im.tif"), str(tmp_path / "lab.tif")]
    assert samlib_main(["evaluate-model", *files, "--halo", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samlib evaluate-model: error: ") and err.count("\n") == 1
    assert "--tiled" in err


def test_evaluate_model_command_line_prints_the_figures(tmp_path, capsys):
    img, lab = synth_image(9, (64, 64), kind="fluorescence", n_objects=3, radius=(6, 8))
    tifffile.imwrite(tmp_path / "im.tif", img)
    tifffile.imwrite(tmp_path / "lab.tif", lab.astype(np.uint16))
    files = [str(tmp_path / "im.tif"), str(tmp_path / "lab.tif"), "--model", "small_cnn"]
    assert benchmark.main([*files, "--box-margin", "2", "--min-area", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["box_margin"] == 2 and out["min_area"] == 10 and out["n_gt"] == lab.max()
    assert out["box_miou"] >= out["box_miou_unclipped"]
    for key in ("point_miou", "ap50", "ap_mean", "f1", "n_pred"):
        assert key in out
    assert samlib_main(["evaluate-model", *files, "--box-margin", "-1"]) == 2
    assert "box_margin" in capsys.readouterr().err


def test_train_command_line_fine_tunes_a_checkpoint(tiny_cnn, tmp_path, capsys):
    base = save_checkpoint(tiny_cnn, tmp_path / "base.pt", TINY_CNN)
    args = ["--model", str(base), "--out", str(tmp_path / "tuned.pt"), "--epochs", "1"]
    for i, (img, lab) in enumerate(_pairs(3)):
        tifffile.imwrite(tmp_path / f"im{i}.tif", img)
        tifffile.imwrite(tmp_path / f"lab{i}.tif", lab.astype(np.uint16))
        args += ["--image", str(tmp_path / f"im{i}.tif"), "--labels", str(tmp_path / f"lab{i}.tif")]
    assert loop.main([*args, "--steps-per-epoch", "2", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"] == str(tmp_path / "tuned.pt")
    assert (tmp_path / "tuned.json").is_file()
    side = json.loads((tmp_path / "tuned.json").read_text())
    assert len(side["data"]["train"]) == 2 and len(side["data"]["val"]) == 1  # 25% held out


def test_train_command_line_needs_validation_data(tiny_cnn, tmp_path, capsys):
    base = save_checkpoint(tiny_cnn, tmp_path / "base.pt", TINY_CNN)
    img, lab = _pairs(1)[0]
    tifffile.imwrite(tmp_path / "im.tif", img)
    tifffile.imwrite(tmp_path / "lab.tif", lab.astype(np.uint16))
    args = ["--model", str(base), "--out", str(tmp_path / "t.pt")]
    args += ["--image", str(tmp_path / "im.tif"), "--labels", str(tmp_path / "lab.tif")]
    assert samlib_main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samlib train: error: ") and err.count("\n") == 1
    assert "--val-image" in err
