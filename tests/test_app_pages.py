"""Every page of the Streamlit app, driven headless with ``streamlit.testing.v1.AppTest``.

The test seam: ``$SAMLIB_MODEL`` points at a tiny random-weight checkpoint (saved with
``samlib.models.loading.save_checkpoint``), so pages run the real pipeline in seconds.
``$SAMLIB_CACHE_DIR`` keeps downloads and embeddings in a temporary folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage.draw import disk as skdisk
from streamlit.runtime.uploaded_file_manager import UploadedFile
from streamlit.testing.v1 import AppTest

import samlib.everything.candidates
from samlib import models
from samlib.app.batch_run import sample_file
from samlib.app.everything_run import area_filter
from samlib.app.session import MAX_UPLOADS, prepare_image
from samlib.cli.parser import main
from samlib.errors import DownloadError, ParameterError
from samlib.evaluation import evaluate, segment_classical
from samlib.image import microscopy
from samlib.image.io import read_image
from samlib.image.microscopy import as_image
from samlib.models import embeddings
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.loading import load_model, save_checkpoint
from samlib.outputs.export import EXPORTS
from samlib.prompts.objects import PromptSet
from samlib.prompts.prompting import MAX_BOXES
from samlib.recipe import Recipe, Tiling, replay
from samlib.records.masks import labels_from_records
from samlib.tiling.tiles import segment_everything_tiled
from tests.conftest import make_disks
from ui import state
from ui.results_ui import BASELINE_ROW

# pycocotools (a compiled module, so not filterable by module name) warns under NumPy 2.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "pages/home.py",
    "pages/system_check.py",
    "pages/everything.py",
    "pages/prompts.py",
    "pages/about.py",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded random-weight tiny ViT-SAM saved in the samlib checkpoint format."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny_random.pt"
    return save_checkpoint(build_sam(VIT_TINY), path, VIT_TINY, extra={"note": "random"})


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.setenv("SAMLIB_MODEL", str(tiny_checkpoint))
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    return tiny_checkpoint


def new_app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def with_sample(at: AppTest, name: str | None = None) -> AppTest:
    """Run the home page so that a bundled sample becomes the session's image."""
    at.run()
    no_errors(at)
    if name is not None:
        at.selectbox(key="w_sample_name").set_value(name).run()
        no_errors(at)
    assert at.session_state[state.IMAGE] is not None
    return at


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_a_fresh_session(app_env, page):
    at = new_app()
    at.switch_page(page).run()
    no_errors(at)
    if page in ("pages/everything.py", "pages/prompts.py"):
        # without an image, the page explains what to do instead of failing
        assert any("No image yet" in i.value for i in at.info)


def test_home_loads_a_sample_and_settings_change_what_sam_sees(app_env):
    at = with_sample(new_app())
    work = at.session_state[state.IMAGE]
    assert work.rgb8.dtype == np.uint8 and work.rgb8.ndim == 3
    assert at.session_state[state.MODEL] == str(app_env)  # the seam picked the test model
    tag = next(s.key for s in at.slider if s.key and s.key.startswith("w_pct_"))
    at.slider(key=tag).set_value((0.0, 50.0)).run()
    no_errors(at)
    brighter = at.session_state[state.IMAGE]
    assert brighter.rgb8.mean() > work.rgb8.mean()
    assert brighter.key != work.key
    # the image survives a page change and coming back
    at.switch_page("pages/about.py").run()
    at.switch_page("pages/home.py").run()
    assert at.session_state[state.IMAGE].key == brighter.key
    assert at.slider(key=tag).value == (0.0, 50.0)


def test_system_check_lists_versions_and_runs_the_self_test(app_env):
    at = new_app()
    at.switch_page("pages/system_check.py").run()
    no_errors(at)
    versions = at.dataframe[0].value
    assert {"torch", "segment-anything", "streamlit", "python"} <= set(versions["package"])
    models = at.dataframe[1].value
    assert {"vit_b", "vit_l", "vit_h"} <= set(models["model"])
    assert not models.set_index("model").loc["vit_h", "cached"]
    at.button(key="run_selftest").click().run()
    no_errors(at)
    steps = at.session_state["selftest"]
    assert [s["ok"] for s in steps] == [True] * len(steps), steps
    assert any("passed" in s.value for s in at.success)


def test_a_second_session_never_sees_the_first_sessions_image(app_env):
    first = with_sample(new_app())
    first.switch_page("pages/prompts.py").run()
    second = new_app()
    second.switch_page("pages/prompts.py").run()
    no_errors(second)
    assert state.IMAGE not in second.session_state
    assert any("No image yet" in i.value for i in second.info)


def _tiff(seed: int, shape=(48, 64), **kwargs) -> bytes:
    buf = io.BytesIO()
    data = np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def upload(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    """Choose "Upload" on the home page and upload ``files`` as (name, bytes)."""
    at.radio(key="w_source_kind").set_value("Upload").run()
    uploader = at.file_uploader(key="w_uploads")
    uploader.set_value([(name, data, "image/tiff") for name, data in files]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_rerun_neither_reads_nor_hashes_the_uploads_again(app_env, monkeypatch):
    hashed, reads = [], []
    real_hash = microscopy.image_hash
    monkeypatch.setattr(microscopy, "image_hash", lambda a: hashed.append(a.shape) or real_hash(a))

    def counted(real):
        def method(upload, *args):
            caller = sys._getframe(1).f_globals["__name__"]
            if not caller.startswith("streamlit."):  # AppTest re-sends the files every run
                reads.append(caller)
            return real(upload, *args)

        return method

    for name in ("read", "getvalue", "getbuffer", "readinto"):
        monkeypatch.setattr(UploadedFile, name, counted(getattr(UploadedFile, name)))
    at = upload(new_app().run(), [("a.tif", _tiff(1)), ("b.tif", _tiff(2))])
    no_errors(at)
    assert at.session_state[state.IMAGE].name == "b.tif"
    assert reads and hashed.count((1, 48, 64, 1)) == 1  # read; the image shown hashed once
    first = (len(reads), len(hashed))
    at.run()
    at.switch_page("pages/about.py").run()
    at.switch_page("pages/home.py").run()
    no_errors(at)
    assert (len(reads), len(hashed)) == first


def test_the_session_keeps_only_the_newest_uploads(app_env):
    files = [(f"img{i}.tif", _tiff(i)) for i in range(5)]
    at = upload(new_app().run(), files)
    no_errors(at)
    kept = [s.image.name for s in at.session_state["uploads"].values()]
    assert kept == ["img2.tif", "img3.tif", "img4.tif"] and MAX_UPLOADS == 3
    assert at.selectbox(key="w_upload_pick").options == kept
    assert any("img0.tif, img1.tif left out" in w.value for w in at.warning)
    at.file_uploader(key="w_uploads").set_value([("new.tif", _tiff(9), "image/tiff")]).run()
    no_errors(at)
    kept = [s.image.name for s in at.session_state["uploads"].values()]
    assert kept == ["img3.tif", "img4.tif", "new.tif"]  # the oldest went


def test_an_upload_that_needs_gigabytes_to_convert_is_one_line(app_env):
    # 100 million zero pixels: about 100 KB as a zlib TIFF, 2.2 GiB to convert for SAM
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((10_000, 10_000), np.uint8), compression="zlib")
    at = upload(new_app().run(), [("bomb.tif", buf.getvalue())])
    assert len(at.error) == 1
    assert "Preparing the image failed" in at.error[0].value
    assert "bomb.tif: converting its 10000 x 10000 px uint8 plane" in at.error[0].value
    assert "Crop or downsample" in at.error[0].value


def seeded(at: AppTest, n_channels: int = 1) -> AppTest:
    """Put a synthetic image with bright disks (known answer) into the session."""

    img, _ = make_disks(shape=(96, 128), dtype=np.uint16)
    data = np.stack([img] * n_channels, axis=-1) if n_channels > 1 else img
    at.session_state[state.IMAGE] = prepare_image(as_image(data, name="disks.tif"))
    return at


def run_everything_page(at: AppTest) -> AppTest:
    at.switch_page("pages/everything.py").run()
    no_errors(at)
    at.slider(key="w_points_per_side").set_value(8)
    at.number_input(key="w_iou_floor").set_value(0.0)
    at.number_input(key="w_stability_floor").set_value(0.0)
    at.button(key="run_everything").click().run()
    no_errors(at)
    return at


def loosen(at: AppTest) -> None:
    """Thresholds at which a random-weight model keeps many masks (its scores are low)."""
    at.slider(key="w_pred_iou_thresh").set_value(0.0)
    at.slider(key="w_stability_score_thresh").set_value(0.0)
    at.slider(key="w_box_nms_thresh").set_value(1.0).run()
    no_errors(at)


RECORD_COLUMNS = [
    "id",
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
]


def open_tab(at: AppTest, page_key: str, name: str) -> AppTest:
    """Open a result tab (only the open tab's content runs)."""
    at.session_state[f"w_tabs_{page_key}"] = name
    at.run()
    no_errors(at)
    return at


def record_table(at: AppTest, page_key: str = "everything"):
    open_tab(at, page_key, "Records")
    return next(df.value for df in at.dataframe if "segmentation" in df.value.columns)


def image_captions(at: AppTest) -> list[str]:
    return [i.caption for e in at.main if type(e).__name__ == "Image" for i in e.proto.imgs]


def metric(at: AppTest, label: str) -> int:
    return int(next(m.value for m in at.metric if m.label == label))


def test_everything_runs_once_and_filters_live_without_the_model(app_env, monkeypatch):
    at = run_everything_page(seeded(new_app()))
    run = at.session_state[state.EVERYTHING]
    assert run.n_candidates > 0 and run.grid_points.shape == (64, 2)
    loosen(at)
    loose = metric(at, "After quality & NMS")
    assert loose > 1

    # from now on the model must not run: any decoder call fails the test

    def boom(*a, **k):
        raise AssertionError("the model ran while re-filtering")

    monkeypatch.setattr(samlib.everything.candidates, "decode_candidates", boom)
    monkeypatch.setattr("samlib.everything.generate.decode_candidates", boom)
    monkeypatch.setattr(sys.modules["samlib.recipe.replay"], "generate_candidates", boom)
    at.slider(key="w_pred_iou_thresh").set_value(0.1).run()
    no_errors(at)
    fewer = metric(at, "After quality & NMS")
    assert 0 < fewer < loose  # a stricter quality threshold keeps fewer masks
    at.slider(key="w_box_nms_thresh").set_value(0.7).run()
    no_errors(at)
    assert metric(at, "After quality & NMS") < fewer  # NMS removes overlapping masks
    assert at.session_state[state.EVERYTHING] is run  # same run, not re-decoded
    at.slider(key="w_box_nms_thresh").set_value(1.0).run()

    records = record_table(at)
    assert list(records.columns) == RECORD_COLUMNS


def test_everything_area_slider_changes_the_count_and_tables(app_env):
    at = run_everything_page(seeded(new_app()))
    loosen(at)
    area = next(s for s in at.slider if s.key and s.key.startswith("w_area_"))
    lo, hi = area.value
    before = metric(at, "After area filter")
    assert before == metric(at, "After whole-image filter") > 1
    cut = sorted(at.session_state["_refilter_memo"].popitem()[1].areas)[5]
    area.set_value((lo, int(cut))).run()
    no_errors(at)
    after = metric(at, "After area filter")
    assert 6 <= after < before
    # the tables list exactly the kept masks, with the workshop's keys and the measurements
    records = record_table(at)
    assert list(records.columns) == RECORD_COLUMNS
    assert len(records) == after and records["area"].between(lo, cut).all()
    assert not any("perimeter" in df.value.columns for df in at.dataframe)  # not measured yet
    open_tab(at, "everything", "Measurements")
    measured = next(df.value for df in at.dataframe if "perimeter" in df.value.columns)
    assert {
        "id",
        "area",
        "centroid_x",
        "eccentricity",
        "solidity",
        "predicted_iou",
        "mean_intensity_c0",
    } <= set(measured.columns)
    assert measured["area"].tolist() == records["area"].tolist()


def prompt_with_typed_point(at: AppTest, x: float, y: float) -> AppTest:
    at.switch_page("pages/prompts.py").run()
    no_errors(at)
    at.number_input(key="w_typed_x").set_value(x)
    at.number_input(key="w_typed_y").set_value(y)
    at.button(key="typed_add_point").click().run()
    no_errors(at)
    return at


def test_prompts_point_gives_three_candidates_and_objects_accumulate(app_env):
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    assert sum("predicted IoU" in c for c in image_captions(at)) == 3
    prompts = at.table[0].value
    assert prompts[["x", "y"]].values.tolist() == [[40.0, 30.0]]
    assert prompts["prompt"].tolist() == ["foreground point"]
    at.radio(key="w_pick").set_value(2)
    at.button(key="add_object").click().run()
    no_errors(at)
    objects = at.session_state[state.OBJECTS][at.session_state[state.IMAGE].key]
    assert len(objects) == 1
    assert any(s.value.startswith("Objects: 1") for s in at.subheader)
    assert not any("predicted IoU" in c for c in image_captions(at))  # fresh canvas
    # a second object, then undo and clear
    prompt_with_typed_point(at, 90.0, 60.0)
    at.button(key="add_object").click().run()
    assert len(objects) == 2
    records = record_table(at, "prompts")
    assert len(records) == 2 and list(records.columns) == RECORD_COLUMNS
    assert np.vstack(records["point_coords"].iloc[1]).tolist() == [[90.0, 60.0]]
    at.button(key="undo_object").click().run()
    assert len(objects) == 1
    at.button(key="clear_objects").click().run()
    no_errors(at)
    assert objects == []


def _spill(obj) -> int:
    """Mask pixels of an accepted box object that lie outside its box."""
    x0, y0, x1, y1 = (int(v) for v in obj.box)
    outside = np.ones(obj.mask.shape, bool)
    outside[y0 : y1 + 1, x0 : x1 + 1] = False
    return int((obj.mask & outside).sum())


def _add_boxes(at: AppTest) -> None:
    for box in ("10, 10, 60, 50", "70, 30, 120, 90"):
        at.text_input(key="w_typed_box").set_value(box)
        at.button(key="typed_add_box").click().run()
        no_errors(at)
    at.button(key="add_objects").click().run()
    no_errors(at)


def test_prompting_again_does_not_hash_the_image_again(app_env, monkeypatch):
    hashed = []
    real_hash = embeddings.image_hash
    monkeypatch.setattr(embeddings, "image_hash", lambda a: hashed.append(a.shape) or real_hash(a))
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    assert hashed  # the first prompt looked the embedding up (and computed it)
    before = len(hashed)
    at.button(key="add_object").click().run()
    at = prompt_with_typed_point(at, 90.0, 60.0)
    no_errors(at)
    assert len(at.session_state[state.OBJECTS][at.session_state[state.IMAGE].key]) == 1
    assert len(hashed) == before


def test_prompts_several_boxes_give_one_object_each(app_env):
    at = seeded(new_app())
    at.switch_page("pages/prompts.py").run()
    _add_boxes(at)
    objects = at.session_state[state.OBJECTS][at.session_state[state.IMAGE].key]
    assert [o.box for o in objects] == [(10.0, 10.0, 60.0, 50.0), (70.0, 30.0, 120.0, 90.0)]
    assert [_spill(o) for o in objects] == [0, 0]  # masks stay inside their box by default
    at.toggle(key="w_clip_to_box").set_value(False).run()
    _add_boxes(at)
    assert len(objects) == 4 and _spill(objects[2]) + _spill(objects[3]) > 0


def test_prompt_error_is_shown_and_earlier_objects_are_kept(app_env):
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    at.button(key="add_object").click().run()
    at.text_input(key="w_typed_box").set_value("1, 2, 3")
    at.button(key="typed_add_box").click().run()
    assert any("four numbers" in e.value for e in at.error)
    assert len(at.session_state[state.OBJECTS][at.session_state[state.IMAGE].key]) == 1


def test_too_many_boxes_at_once_are_one_line_and_earlier_objects_are_kept(app_env):
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    at.button(key="add_object").click().run()
    corners = np.random.default_rng(0).uniform(0, 80, (MAX_BOXES + 1, 2))
    boxes = np.hstack([corners, corners + 10])
    at.session_state["typed_prompts"] = PromptSet(np.zeros((0, 2)), np.zeros(0, int), boxes)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and f"{MAX_BOXES + 1} boxes in one call" in at.error[0].value
    assert "a few at a time" in at.error[0].value  # what to do about it
    assert len(at.session_state[state.OBJECTS][at.session_state[state.IMAGE].key]) == 1


def test_home_multichannel_zstack_sample_offers_channels_and_planes(app_env):
    at = with_sample(new_app(), "Synthetic 2-channel z-stack (16-bit)")
    work = at.session_state[state.IMAGE]
    assert work.image.n_channels == 2 and work.image.n_planes == 3
    channel_boxes = [s for s in at.selectbox if s.key and s.key.startswith("w_chR_")]
    assert len(channel_boxes) == 1
    green = next(s for s in at.selectbox if s.key and s.key.startswith("w_chG_"))
    green.set_value(None).run()  # membranes off: only the nuclei channel remains
    no_errors(at)
    assert at.session_state[state.IMAGE].rgb8[..., 1].max() == 0
    plane = next(s for s in at.select_slider if s.key and s.key.startswith("w_plane_"))
    plane.set_value("max").run()
    no_errors(at)
    assert at.session_state[state.IMAGE].settings.plane == "max"


@pytest.mark.parametrize(
    "sample", ["DSB2018 nuclei", "Cell (scikit-image)", "Immunohistochemistry (scikit-image)"]
)
def test_home_shows_every_sample_with_its_attribution(app_env, sample):
    at = with_sample(new_app(), sample)
    assert at.session_state[state.IMAGE].name
    assert any("Source:" in m.value for m in at.markdown)


def test_a_model_that_is_not_downloaded_is_explained_not_a_crash(app_env):
    at = seeded(new_app())
    at.session_state[state.MODEL] = "vit_h"
    at.switch_page("pages/everything.py").run()
    assert not at.exception
    message = " ".join(e.value for e in at.error)
    assert "vit_h" in message and "not downloaded" in message
    assert "Download it on the Image & model page" in message


def test_download_failure_says_what_to_do(app_env, monkeypatch):
    def offline(name, progress=None):
        progress(0, 100)
        raise DownloadError(f"cannot reach the server for {name}: offline")

    monkeypatch.setattr("ui.model_ui.download_model", offline)
    at = new_app().run()
    at.selectbox(key="w_model_choice").set_value("vit_b").run()
    assert any("Not downloaded yet" in w.value for w in at.warning)
    at.button(key="download_vit_b").click().run()
    assert not at.exception
    message = " ".join(e.value for e in at.error)
    assert "offline" in message and "copy the checkpoint file into the cache folder" in message


@pytest.mark.parametrize(
    "exc, says, logged",
    [
        (ParameterError("points_per_side must be in [1, 1024], got 0"), "points_per_side", False),
        (RuntimeError("the decoder broke\non two lines"), "RuntimeError: the decoder broke", True),
        (MemoryError("Unable to allocate 9.3 GiB"), "not enough memory", True),
    ],
)
def test_a_failed_run_is_one_line_and_keeps_the_earlier_results(
    app_env, monkeypatch, caplog, exc, says, logged
):
    at = run_everything_page(seeded(new_app()))
    loosen(at)
    count = metric(at, "After area filter")

    def fails(*a, **k):
        raise exc

    monkeypatch.setattr(sys.modules["samlib.recipe.replay"], "generate_candidates", fails)
    with caplog.at_level("ERROR", logger="ui.state"):
        at.button(key="run_everything").click().run()
    assert not at.exception
    assert len(at.error) == 1 and says in at.error[0].value
    assert "Traceback" not in at.error[0].value and "\non two" not in at.error[0].value
    assert metric(at, "After area filter") == count  # the previous run is still shown
    # a surprise is logged, with its traceback, on the server only; a user's mistake is not
    tracebacks = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert tracebacks == ([exc] if logged else [])


def test_a_prompt_that_fails_unexpectedly_is_one_line_and_keeps_the_objects(app_env, monkeypatch):
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    at.button(key="add_object").click().run()

    def fails(*a, **k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr("samlib.tiling.prompts.prompt_candidates", fails)
    at.number_input(key="w_typed_x").set_value(50.0)
    at.number_input(key="w_typed_y").set_value(40.0)
    at.button(key="typed_add_point").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "RuntimeError: CUDA error" in at.error[0].value
    assert len(at.session_state[state.OBJECTS][at.session_state[state.IMAGE].key]) == 1


@pytest.mark.slow
def test_everything_fast_mode_runs_and_records_it(app_env):
    at = seeded(new_app())
    at.switch_page("pages/everything.py").run()
    at.slider(key="w_points_per_side").set_value(4)
    at.toggle(key="w_fast_mode").set_value(True)
    at.button(key="run_everything").click().run()
    no_errors(at)
    run = at.session_state[state.EVERYTHING]
    assert run.fast is True
    assert run.params.pred_iou_thresh == pytest.approx(0.88)  # decoded at the live values


@pytest.mark.slow
def test_everything_on_a_sample_with_reference_shows_the_evaluation(app_env):
    at = run_everything_page(with_sample(new_app()))  # DSB2018: 125 reference nuclei
    loosen(at)
    at.checkbox(key="w_drop_whole_image").uncheck().run()
    no_errors(at)
    open_tab(at, "everything", "Compare with reference")
    labels = [m.label for m in at.metric]
    assert {"precision", "recall", "f1", "ap", "mean matched iou"} <= set(labels)
    table = next(df.value for df in at.dataframe if "threshold" in df.value.columns)
    assert table["threshold"].tolist()[0] == 0.5 and len(table) == 10
    assert (table["tp"] + table["fn"] == 125).all()
    # beside SAM's scores, the classical baseline's on the same image and reference
    methods = method_rows(at)
    work = at.session_state[state.IMAGE]
    baseline = evaluate(segment_classical(work.rgb8), work.ground_truth)
    assert methods.loc[BASELINE_ROW, "f1"] == pytest.approx(baseline["f1"])
    assert methods.loc[BASELINE_ROW, "ap"] == pytest.approx(baseline["ap"])
    shown = {m.label: float(m.value) for m in at.metric}
    assert methods.iloc[0]["f1"] == pytest.approx(shown["f1"], abs=0.005)


def method_rows(at: AppTest):
    """The Compare with reference tab's table of SAM's and the baseline's scores."""
    return next(df.value for df in at.dataframe if "method" in df.value.columns).set_index("method")


def tiff_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def upload_with_reference(labels: np.ndarray) -> AppTest:
    """Upload the disks image, then ``labels`` as its reference, on the home page."""
    img, _ = make_disks(shape=(96, 128), dtype=np.uint16)
    at = new_app()
    at.run()
    at.radio(key="w_source_kind").set_value("Upload").run()
    at.file_uploader(key="w_uploads").set_value(("disks.tif", tiff_bytes(img), "image/tiff"))
    at.run()
    no_errors(at)
    reference = next(u for u in at.file_uploader if u.label.startswith("Reference labels"))
    reference.set_value(("disks_labels.tif", tiff_bytes(labels), "image/tiff")).run()
    return at


def test_an_uploaded_reference_is_compared_with_sam_and_the_baseline(app_env):
    _, labels = make_disks(shape=(96, 128))
    at = upload_with_reference(labels)
    no_errors(at)
    work = at.session_state[state.IMAGE]
    np.testing.assert_array_equal(work.ground_truth, labels)
    assert any("Reference segmentation available: 2 objects" in c.value for c in at.caption)
    run_everything_page(at)
    loosen(at)
    open_tab(at, "everything", "Compare with reference")
    assert {"precision", "recall", "f1", "ap", "mean matched iou"} <= {m.label for m in at.metric}
    methods = method_rows(at)
    assert methods.loc[BASELINE_ROW, "f1"] == 1.0  # two bright disks: a threshold is enough
    assert methods.loc[BASELINE_ROW, "n_pred"] == 2
    # the reference survives a page change (the uploader itself forgets its file)
    at.switch_page("pages/home.py").run()
    no_errors(at)
    assert at.session_state[state.IMAGE].ground_truth is work.ground_truth


def test_a_reference_of_another_size_is_one_error_line(app_env):
    at = upload_with_reference(np.zeros((50, 128), np.uint16))
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "128 x 50 px but the image disks.tif is 128 x 96 px" in message
    assert at.session_state[state.IMAGE].ground_truth is None


def test_home_loads_and_checks_the_injected_model(app_env):
    at = new_app().run()
    at.button(key="load_model").click().run()
    no_errors(at)
    message = " ".join(s.value for s in at.success)
    assert "tiny_random" in message and "256 px input" in message


@pytest.mark.parametrize("mode", ["uncompressed_rle", "coco_rle"])
def test_everything_views_work_with_rle_output_modes(app_env, mode):
    at = seeded(new_app())
    at.switch_page("pages/everything.py").run()
    at.selectbox(key="w_output_mode").set_value(mode)
    run_everything_page(at)
    loosen(at)
    n = metric(at, "After area filter")
    assert n > 1
    records = record_table(at)
    assert len(records) == n and records["segmentation"].iloc[0] == "96x128 mask"
    open_tab(at, "everything", "Measurements")
    measured = next(df.value for df in at.dataframe if "perimeter" in df.value.columns)
    assert measured["area"].tolist() == records["area"].tolist()
    open_tab(at, "everything", "Gallery")
    assert sum(c.startswith("#") for c in image_captions(at)) == min(n, 24)


def test_everything_starts_at_the_thresholds_suggested_for_the_model(app_env, monkeypatch):
    # the injected checkpoint is known by its file stem; give it suggested thresholds
    suggested = {"pred_iou_thresh": 0.2, "stability_score_thresh": 0.3, "min_mask_region_area": 20}
    entry = dataclasses.replace(
        models.REGISTRY["small_cnn"], name=app_env.stem, suggested_params=suggested
    )
    monkeypatch.setitem(models.REGISTRY, app_env.stem, entry)
    at = run_everything_page(seeded(new_app()))
    assert at.slider(key="w_pred_iou_thresh").value == 0.2
    assert at.slider(key="w_stability_score_thresh").value == 0.3
    assert at.number_input(key="w_min_mask_region_area").value == 20
    assert at.session_state[state.EVERYTHING].params.min_mask_region_area == 20
    assert not [b for b in at.button if b.key == "use_suggested"]  # already in use
    at.slider(key="w_pred_iou_thresh").set_value(0.9).run()
    at.number_input(key="w_min_mask_region_area").set_value(0).run()
    no_errors(at)
    at.button(key="use_suggested").click().run()
    no_errors(at)
    assert at.slider(key="w_pred_iou_thresh").value == 0.2
    assert at.slider(key="w_stability_score_thresh").value == 0.3
    assert at.number_input(key="w_min_mask_region_area").value == 20


def app_downloads(at: AppTest, page_key: str) -> dict[str, bytes]:
    """Prepare the page's downloads; return the files by export format."""
    open_tab(at, page_key, "Downloads")
    at.button(key=f"prepare_{page_key}").click().run()
    no_errors(at)
    return at.session_state["_downloads"][page_key][1]


def cli_replay(tmp_path: Path, command: str, files: dict[str, bytes], model: Path) -> np.ndarray:
    """Run ``samlib COMMAND disks.tif --recipe params.json`` on the seeded image's data."""

    img, _ = make_disks(shape=(96, 128), dtype=np.uint16)  # what seeded() put in the session
    tifffile.imwrite(tmp_path / "disks.tif", img)
    (tmp_path / "params.json").write_bytes(files["params"])
    argv = [command, tmp_path / "disks.tif", "--recipe", tmp_path / "params.json"]
    argv += ["--model", model, "--out", tmp_path / "out", "--export", "all", "--no-cache"]
    assert main([str(a) for a in argv]) == 0
    for fmt, export in EXPORTS.items():  # the CLI writes what the app offers, same names
        assert (tmp_path / "out" / export.file_name).is_file(), fmt
    return tifffile.imread(tmp_path / "out" / "labels.tif")


@pytest.mark.slow
def test_everything_params_json_replays_to_the_apps_label_image(app_env, tmp_path):
    at = run_everything_page(seeded(new_app()))
    loosen(at)
    at.checkbox(key="w_drop_whole_image").uncheck().run()
    area = next(s for s in at.slider if s.key and s.key.startswith("w_area_"))
    lo, hi = area.value
    area.set_value((lo, (lo + hi) // 2)).run()
    no_errors(at)
    files = app_downloads(at, "everything")
    app_labels = tifffile.imread(io.BytesIO(files["labels_tiff"]))
    assert app_labels.max() == metric(at, "After area filter") > 1
    assert np.array_equal(cli_replay(tmp_path, "everything", files, app_env), app_labels)


def big_disks(shape=(2000, 2000), n=120, seed=5) -> np.ndarray:
    """A large 16-bit image of bright disks 8-24 px in radius (tiles' test image)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint16)
    for _ in range(n):
        rr, cc = skdisk(
            tuple(rng.integers(30, min(shape) - 30, 2)), rng.integers(8, 25), shape=shape
        )
        img[rr, cc] = rng.integers(20000, 60000)
    return img


@pytest.mark.slow
def test_everything_tiles_a_large_image_as_the_library_does(app_env, tmp_path):
    at = new_app()
    work = prepare_image(as_image(big_disks(), name="big.tif"))
    at.session_state[state.IMAGE] = work
    at.switch_page("pages/everything.py").run()
    no_errors(at)
    # 2,000 px seen at 256 px by the test model: objects shrink 7.8 times, tiles are on
    assert at.toggle(key=f"w_tiled_{work.key}").value is True
    assert any("7.8 times smaller" in c.value for c in at.caption)
    at.number_input(key="w_tile_size").set_value(1000)
    at.number_input(key="w_tile_halo").set_value(16)
    at.selectbox(key="w_output_mode").set_value("coco_rle")
    at.slider(key="w_points_per_side").set_value(4)
    at.number_input(key="w_iou_floor").set_value(0.0)
    at.number_input(key="w_stability_floor").set_value(0.0).run()
    assert any("4 tiles of 1032 px windows" in c.value for c in at.caption)
    at.button(key="run_everything").click().run()
    no_errors(at)
    run = at.session_state[state.EVERYTHING]
    assert [t.core for t in run.tiles] == [
        (0, 0, 1000, 1000),
        (1000, 0, 2000, 1000),
        (0, 1000, 1000, 2000),
        (1000, 1000, 2000, 2000),
    ]
    loosen(at)
    at.checkbox(key="w_drop_whole_image").uncheck().run()
    shown = next(iter(at.session_state["_refilter_memo"].values())).records
    lib = segment_everything_tiled(
        load_model(app_env, fast_encoder=True),
        work.rgb8,
        tile_size=1000,
        halo=16,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    assert len(shown) == len(lib) > 10
    for a, b in zip(shown, lib, strict=True):
        assert a == b
    open_tab(at, "everything", "Overlay")
    assert "tile grid" in at.get("button_group")[0].proto.options[-1].content
    area = next(s for s in at.slider if s.key and s.key.startswith("w_area_"))
    lo, hi = area.value
    area.set_value((lo, lo + (hi - lo) // 4)).run()  # a few masks: quick to export
    files = app_downloads(at, "everything")
    recipe = Recipe.from_dict(json.loads(files["params"]))
    assert recipe.tiling == Tiling(1000, 16, 0.5)
    app_labels = tifffile.imread(io.BytesIO(files["labels_tiff"]))
    _, replayed = replay(recipe, load_model(app_env, fast_encoder=True), work.image)
    assert app_labels.max() == metric(at, "After area filter") > 1
    assert np.array_equal(labels_from_records(replayed, shape=(2000, 2000)), app_labels)


def test_prompts_on_tiles_of_a_large_image(app_env):
    at = new_app()
    work = prepare_image(as_image(big_disks(), name="big.tif"))
    at.session_state[state.IMAGE] = work
    at.switch_page("pages/prompts.py").run()
    no_errors(at)
    assert at.toggle(key=f"w_tiled_{work.key}").value is True  # on by default, as for everything
    at.number_input(key="w_tile_size").set_value(1000)
    at.number_input(key="w_tile_halo").set_value(16).run()
    at = prompt_with_typed_point(at, 1500.0, 400.0)
    assert sum("predicted IoU" in c for c in image_captions(at)) == 3
    at.button(key="add_object").click().run()
    no_errors(at)
    # the objects keep the tiling they were made with: the switch is locked until cleared
    assert at.toggle(key=f"w_tiled_{work.key}").disabled
    assert any("Clear the objects to change the tiles" in c.value for c in at.caption)
    files = app_downloads(at, "prompts")
    recipe = Recipe.from_dict(json.loads(files["params"]))
    assert recipe.tiling == Tiling(1000, 16, 0.5)
    app_labels = tifffile.imread(io.BytesIO(files["labels_tiff"]))
    _, replayed = replay(recipe, load_model(app_env, fast_encoder=True), work.image)
    assert app_labels.max() == 1  # found in the window x 968..2000, y 0..1032 alone:
    assert app_labels[:, :968].max() == 0 and app_labels[1032:].max() == 0
    assert np.array_equal(labels_from_records(replayed, shape=(2000, 2000)), app_labels)


def test_prompts_params_json_replays_to_the_apps_label_image(app_env, tmp_path):
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    at.radio(key="w_pick").set_value(1)
    at.button(key="add_object").click().run()
    _add_boxes(at)
    files = app_downloads(at, "prompts")
    app_labels = tifffile.imread(io.BytesIO(files["labels_tiff"]))
    assert app_labels.max() == 3
    assert np.array_equal(cli_replay(tmp_path, "prompt", files, app_env), app_labels)


def test_download_buttons_carry_the_export_names(app_env):
    at = prompt_with_typed_point(seeded(new_app()), 40.0, 30.0)
    at.button(key="add_object").click().run()
    app_downloads(at, "prompts")
    buttons = {b.proto.label: b for b in at.get("download_button")}
    assert set(buttons) == {e.file_name for e in EXPORTS.values()}


def test_batch_page_runs_the_everything_settings_over_samples(app_env):
    at = new_app()
    at.switch_page("pages/batch.py").run()
    no_errors(at)
    assert any("suggested thresholds" in i.value for i in at.info)  # no run yet: defaults
    at = run_everything_page(seeded(at))
    loosen(at)
    shown = metric(at, "After area filter")
    page = at.session_state["_refilter_memo"]
    page = area_filter(next(iter(page.values())), at.session_state["area_range"])
    at.switch_page("pages/batch.py").run()
    no_errors(at)
    assert any("last run of **Segment everything**" in s.value for s in at.success)
    at.multiselect(key="batch_samples").set_value(["DSB2018 nuclei", "Cell (scikit-image)"])
    at.button(key="run_batch").click().run()
    no_errors(at)
    outcome = at.session_state["batch_outcome"]
    assert outcome.counts == {"images": 3, "done": 3, "failed": 0}
    assert [m.value for m in at.metric][:3] == ["3", "3", "0"]
    with zipfile.ZipFile(io.BytesIO(outcome.zip_bytes)) as zf:
        names = set(zf.namelist())
        assert {"objects.parquet", "objects.csv", "summary.csv", "manifest.json"} <= names
        params = json.loads(zf.read("dsb2018_nuclei/params.json"))
        labels = tifffile.imread(io.BytesIO(zf.read("dsb2018_nuclei/labels.tif")))
    # the zip's labels are the recipe's, as the library (and `samlib batch`) replay it
    model = load_model(app_env, fast_encoder=True)
    name, content = sample_file("DSB2018 nuclei")
    rgb, records = replay(Recipe.from_dict(params), model, read_image(content, name=name))
    assert labels.max() == len(records)
    assert np.array_equal(labels, labels_from_records(records, shape=rgb.shape[:2]))
    # the current image gets, in the batch, what the Segment everything page showed
    with zipfile.ZipFile(io.BytesIO(outcome.zip_bytes)) as zf:
        disks = tifffile.imread(io.BytesIO(zf.read("disks/labels.tif")))
    assert disks.max() == shown > 1
    assert np.array_equal(disks, labels_from_records(page.kept, shape=disks.shape))
    at.selectbox(key="batch_open").set_value("dsb2018_nuclei")
    at.button(key="batch_open_button").click().run()
    assert at.session_state[state.IMAGE].name == "dsb2018_nuclei.tif"


def test_upload_of_a_tiff_with_two_series_shows_the_first_with_a_note(app_env):
    first = np.arange(40 * 56, dtype=np.uint16).reshape(40, 56)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as w:
        w.write(first, photometric="minisblack")
        w.write(np.zeros((12, 20), np.uint16), photometric="minisblack")
    at = new_app()
    at.run()
    at.radio(key="w_source_kind").set_value("Upload").run()
    at.file_uploader(key="w_uploads").set_value(("two.tif", buf.getvalue(), "image/tiff")).run()
    no_errors(at)
    work = at.session_state[state.IMAGE]
    np.testing.assert_array_equal(work.image.data[0, ..., 0], first)
    notes = [m.value for m in at.markdown if "image series" in m.value]
    assert len(notes) == 1 and "holds 2 image series" in notes[0] and "other 1" in notes[0]


TYPED_BOX_SCRIPT = """
import json
import numpy as np
from streamlit.testing.v1 import AppTest
from samlib.app.session import prepare_image
from samlib.image.microscopy import as_image
from tests.conftest import make_disks
from ui import state
from ui.results_ui import BASELINE_ROW

at = AppTest.from_file("app.py", default_timeout=120)
img, _ = make_disks(shape=(96, 128), dtype=np.uint16)
at.session_state[state.IMAGE] = prepare_image(as_image(img, name="disks.tif"))
at.switch_page("pages/prompts.py").run()
seen = []
for text in ("1, 2, 3", "nan, 2, 30, 40", "10, 10, 60, 50"):
    at.text_input(key="w_typed_box").set_value(text)
    at.button(key="typed_add_box").click().run()
    seen.append({
        "errors": [e.value for e in at.error],
        "exceptions": [e.value for e in at.exception],
        "boxes": at.session_state["typed_prompts"].boxes.tolist(),
    })
print(json.dumps({"debug": __debug__, "seen": seen}))
"""


def test_typed_box_is_checked_under_python_optimize(app_env):
    """``python -O`` drops asserts: the typed box must be checked by real code."""
    run = subprocess.run(
        [sys.executable, "-O", "-c", TYPED_BOX_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["debug"] is False
    short, nan, good = result["seen"]
    for bad, text in ((short, "1, 2, 3"), (nan, "nan, 2, 30, 40")):
        assert bad["exceptions"] == [] and bad["boxes"] == []
        assert [e for e in bad["errors"] if "four numbers" in e and text in e]
    assert good["exceptions"] == [] and good["errors"] == []
    assert good["boxes"] == [[10.0, 10.0, 60.0, 50.0]]
