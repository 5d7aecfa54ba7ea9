"""The app in a real browser: ``streamlit run`` on 127.0.0.1, driven with Playwright + Chromium.

One browser session walks through the workshop: load a sample, check the system, segment
everything and move the filters, click a point and draw a box on the canvas, download the
label TIFF and check its contents. Screenshots of each page go to ``$SAMLIB_SCREENSHOTS``.

Skipped when ``/usr/bin/chromium`` is missing, unless ``SAMLIB_REQUIRE_BROWSER=1`` (CI),
which turns the skip into a failure. The model (the bundled demo model, or a tiny
random-weight SAM) is injected with ``SAMLIB_MODEL``; the test recomputes its answers
locally to know where masks must be.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from samlib import coords
from samlib.app.session import prepare_image
from samlib.cli.parser import main
from samlib.datasets.samples import DATA_DIR, load_sample
from samlib.datasets.synth import nuclei_image
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import compute_embedding
from samlib.models.loading import (
    REGISTRY,
    checkpoint_path,
    load_model,
    save_checkpoint,
    suggested_params,
)
from samlib.prompts.objects import PromptSet, predict_candidates

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
    ),
]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# README screenshots are refreshed with SAMLIB_SCREENSHOTS=docs/screenshots; other runs
# keep the tracked files untouched.
SHOTS = ROOT / os.environ.get("SAMLIB_SCREENSHOTS", "test-artifacts/screenshots")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT_SAMPLE = "DSB2018 nuclei"  # 512 px wide: shown on the 450 px canvas at a scale != 1
CANVAS_WIDTH = 450  # the default canvas width

if not CHROMIUM.exists():
    if os.environ.get("SAMLIB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{CHROMIUM} is missing and SAMLIB_REQUIRE_BROWSER=1", pytrace=False)
    pytest.skip(f"{CHROMIUM} not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The bundled demo model when the package ships one, else a tiny random-weight SAM.

    Either way the test computes the model's answers itself, so it checks the app, not
    the model's quality; the demo model only makes the screenshots meaningful.
    """

    for name, entry in REGISTRY.items():
        if entry.package_file and checkpoint_path(name).is_file():
            model = load_model(checkpoint_path(name), "cpu")
            work = prepare_image(load_sample(PROMPT_SAMPLE)[0])
            if find_point_inside_a_candidate(model, compute_embedding(model, work.rgb8), work):
                return checkpoint_path(name)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("browser") / "tiny_random.pt"
    return save_checkpoint(build_sam(VIT_TINY), path, VIT_TINY)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """``streamlit run app.py`` on a free port; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "SAMLIB_MODEL": str(checkpoint),
        "SAMLIB_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.headless",
                "true",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1280, "height": 860}, accept_downloads=True
        )
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(server)
        pg.get_by_role("heading", name="Image & model").wait_for()
        yield pg
        browser.close()


def idle(pg) -> None:
    """Wait until the app has finished its rerun (Streamlit's running indicator gone)."""
    pg.wait_for_timeout(300)
    pg.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=120_000
    )
    pg.wait_for_timeout(200)


def go(pg, title: str, heading: str) -> None:
    pg.locator('[data-testid="stSidebarNavLink"]').filter(has_text=title).click()
    pg.get_by_role("heading", name=heading).wait_for()
    idle(pg)


def shot(pg, name: str, height: int = 860) -> None:
    """Save a screenshot for the README (``height`` px tall), as a small PNG."""

    SHOTS.mkdir(parents=True, exist_ok=True)
    size = pg.viewport_size
    if height != size["height"]:
        pg.set_viewport_size({"width": size["width"], "height": height})
        pg.wait_for_timeout(1000)
    idle(pg)
    pg.wait_for_timeout(1000)
    idle(pg)  # a freshly mounted canvas reports its size once, which reruns the page
    png = pg.screenshot()
    if height != size["height"]:
        pg.set_viewport_size(size)
        pg.wait_for_timeout(500)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    # 3/4 size and 128 colours keep the five screenshots at a few hundred KB in total
    img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS)
    img.quantize(128, method=Image.Quantize.MEDIANCUT).save(SHOTS / f"{name}.png", optimize=True)


def metric(pg, label: str) -> int:
    box = pg.locator('[data-testid="stMetric"]').filter(has_text=label).first
    text = box.locator('[data-testid="stMetricValue"]').inner_text()
    return int(text.replace(",", ""))


def wait_metric(pg, label: str, ok, timeout: float = 60.0) -> int:
    """Poll a metric until ``ok(value)`` (reruns finish asynchronously); return the value."""
    deadline = time.time() + timeout
    while True:
        value = metric(pg, label)
        if ok(value) or time.time() > deadline:
            return value
        pg.wait_for_timeout(250)


def slider_key(pg, label: str, key: str, times: int = 1, scope: str = "") -> None:
    """Press a key on the slider whose label is ``label`` (focus, then keyboard)."""
    widget = pg.locator(f'{scope} [data-testid="stSlider"]').filter(has_text=label).first
    thumb = widget.get_by_role("slider").first
    thumb.focus()
    for _ in range(times):
        thumb.press(key)
    idle(pg)


def download(pg, file_name: str, prepared: bool = False) -> bytes:
    """Click the download button of ``file_name`` on the open page's Downloads tab."""
    if not prepared:
        pg.get_by_role("tab", name="Downloads").click()
        pg.get_by_role("button", name="Prepare downloads").click()
    pg.get_by_role("button", name=file_name).wait_for()
    idle(pg)
    with pg.expect_download() as dl:
        pg.get_by_role("button", name=file_name).click()
    assert dl.value.suggested_filename.endswith("_" + file_name)
    return Path(dl.value.path()).read_bytes()


def replay(folder: Path, command: str, params: bytes, checkpoint: Path) -> np.ndarray:
    """``samlib COMMAND <the sample> --recipe params.json``: its label image."""
    folder.mkdir()
    (folder / "params.json").write_bytes(params)
    image = DATA_DIR / "dsb2018_nuclei" / "image.tif"  # the sample the pages showed
    argv = [command, image, "--recipe", folder / "params.json", "--model", checkpoint]
    assert main([str(a) for a in (*argv, "--out", folder / "out", "--no-cache")]) == 0
    return tifffile.imread(folder / "out" / "labels.tif")


def test_workshop_in_the_browser(page, checkpoint, tmp_path):
    pg = page
    # -- Image & model: the default sample is shown with its preview -----------------------
    pg.get_by_text("What SAM sees: dsb2018").wait_for()
    shot(pg, "home", height=1150)
    assert_no_server_folders(pg, checkpoint)

    # -- uploads: a damaged file is explained, a 16-bit 2-channel TIFF is shown ------------
    pg.get_by_test_id("stRadioGroup").get_by_text("Upload", exact=True).click()
    idle(pg)
    good = io.BytesIO()
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        good, rng.integers(0, 4000, (2, 64, 80), dtype=np.uint16), metadata={"axes": "CYX"}
    )
    pg.locator('input[type="file"]').first.set_input_files(
        files=[
            {"name": "broken.tif", "mimeType": "image/tiff", "buffer": b"II*\x00garbage"},
            {"name": "two_channels.tif", "mimeType": "image/tiff", "buffer": good.getvalue()},
        ]
    )
    pg.get_by_text("Reading broken.tif failed").wait_for()
    pg.get_by_text("What SAM sees: two_channels.tif").wait_for()
    assert pg.get_by_text("R channel").count() == 1  # channel mapping for 2 channels
    pg.get_by_text("Bundled sample", exact=True).click()
    pg.get_by_text("What SAM sees: dsb2018").wait_for()
    idle(pg)

    # -- System check: versions and a passing self-test ------------------------------------
    go(pg, "System check", "System check")
    pg.get_by_role("button", name="Run self-test").click()
    pg.get_by_text("stages passed").wait_for()
    shot(pg, "system_check")
    assert_no_server_folders(pg, checkpoint)

    # -- Segment everything: small grid, floors at 0, run, then live filters --------------
    go(pg, "Segment everything", "Segment everything")
    slider_key(pg, "points_per_side", "Home", scope='[data-testid="stSidebar"]')  # 4
    slider_key(pg, "points_per_side", "ArrowRight", 4, scope='[data-testid="stSidebar"]')
    pg.get_by_text("Live-filter floors").click()
    for label in ("Lowest pred_iou_thresh offered", "Lowest stability_score_thresh offered"):
        box = pg.get_by_role("spinbutton", name=label)
        box.fill("0")
        box.press("Enter")
        idle(pg)
    pg.get_by_text("Mask post-processing").click()
    box = pg.get_by_role("spinbutton", name="min_mask_region_area (px)")
    suggested = suggested_params(checkpoint.stem)  # the demo model's entry, if it is used
    assert box.input_value() == str(suggested.get("min_mask_region_area", 0))
    pg.get_by_role("button", name="Run segment everything").click()
    pg.get_by_text("Decoded candidates").wait_for(timeout=150_000)
    idle(pg)
    assert metric(pg, "Decoded candidates") > 0
    slider_key(pg, "pred_iou_thresh", "Home")
    slider_key(pg, "stability_score_thresh", "Home")
    slider_key(pg, "box_nms_thresh", "End")
    # random weights: most masks cover most of the image, so keep whole-image masks too
    pg.get_by_role("checkbox", name="Exclude whole-image masks").uncheck(force=True)
    idle(pg)
    before = wait_metric(pg, "After area filter", lambda v: v > 1)
    assert before > 1
    shot(pg, "everything", height=1300)
    slider_key(pg, "Area range", "End")  # lower bound up to the largest area
    after = wait_metric(pg, "After area filter", lambda v: v < before)
    assert 1 <= after < before

    # -- its params.json replays through the command line to the same label image --------
    labels, params = download(pg, "labels.tif"), download(pg, "params.json", prepared=True)
    assert replay(tmp_path / "everything", "everything", params, checkpoint).tolist() == (
        tifffile.imread(io.BytesIO(labels)).tolist()
    )

    # -- Prompts: a click on the canvas gives a mask at that place ------------------------
    go(pg, "Prompts", "Segment with prompts")
    work = prepare_image(load_sample(PROMPT_SAMPLE)[0])
    model = load_model(checkpoint, "cpu")
    emb = compute_embedding(model, work.rgb8)
    found = find_point_inside_a_candidate(model, emb, work)
    assert found is not None, "no click position lies inside a candidate of the test model"
    target, pick, expected = found
    idle(pg)
    canvas = pg.locator("canvas.upper-canvas").last  # Fabric's event layer
    bb = canvas.bounding_box()
    canvas_size = coords.fit_width(work.size_xy, CANVAS_WIDTH)
    assert (round(bb["width"]), round(bb["height"])) == canvas_size
    scale = canvas_size[0] / work.size_xy[0]
    canvas.click(position={"x": target[0] * scale, "y": target[1] * scale})
    pg.get_by_text("Candidate 1: predicted IoU").wait_for()
    idle(pg)
    table = prompt_table(pg)
    assert table[0][0] == "foreground point"
    assert abs(table[0][1] - target[0]) <= 1.5 and abs(table[0][2] - target[1]) <= 1.5
    pg.locator("label").filter(has_text=re.compile(rf"^{pick + 1} \(IoU")).click()
    idle(pg)
    pg.get_by_role("button", name="Add to objects").click()
    pg.get_by_role("heading", name="Objects: 1").wait_for()
    idle(pg)

    # -- a box drawn on the canvas ---------------------------------------------------------
    pg.get_by_text("Box", exact=True).click()
    idle(pg)
    box = (120.0, 100.0, 300.0, 260.0)  # image pixels, XYXY
    canvas = pg.locator("canvas.upper-canvas").last  # a fresh canvas after "Add"
    canvas.wait_for(state="visible")
    bb = canvas.bounding_box()
    pg.mouse.move(bb["x"] + box[0] * scale, bb["y"] + box[1] * scale)
    pg.mouse.down()
    pg.mouse.move(bb["x"] + box[2] * scale, bb["y"] + box[3] * scale, steps=8)
    pg.mouse.up()
    pg.get_by_text("Candidate 1: predicted IoU").wait_for()
    idle(pg)
    row = next(r for r in prompt_table(pg) if r[0] == "box")
    assert np.allclose(row[1:], box, atol=2.0), row
    shot(pg, "prompts", height=1300)
    pg.get_by_role("button", name="Add to objects").click()
    pg.get_by_role("heading", name="Objects: 2").wait_for()
    idle(pg)

    # -- the label TIFF holds both objects, the clicked one where it was clicked ----------
    labels = tifffile.imread(io.BytesIO(download(pg, "labels.tif")))
    assert labels.shape == work.rgb8.shape[:2] and labels.dtype == np.uint16
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.max() == 2
    row, col = coords.xy_to_rowcol(*target)
    assert labels[row, col] != 0
    first = labels == 1
    visible = expected & ~(labels == 2)  # the box's mask may cover part of the first
    inter = (first & visible).sum()
    assert inter / max(1, (first | visible).sum()) > 0.95
    params = download(pg, "params.json", prepared=True)
    assert np.array_equal(replay(tmp_path / "prompts", "prompt", params, checkpoint), labels)

    # -- Batch: three uploads, one zip with every file -------------------------------------
    go(pg, "Batch", "Batch")
    pg.get_by_role("checkbox", name=re.compile("The current image")).uncheck(force=True)
    uploads = []
    for i, suffix in enumerate(("tif", "tif", "png")):
        img = nuclei_image(40 + i, 128)[0]
        buf = io.BytesIO()
        if suffix == "tif":
            tifffile.imwrite(buf, img)
        else:
            Image.fromarray((img >> 8).astype(np.uint8)).save(buf, format="PNG")
        name, mime = f"upload_{i}.{suffix}", "image/" + suffix
        uploads.append({"name": name, "mimeType": mime, "buffer": buf.getvalue()})
    pg.locator('input[type="file"]').first.set_input_files(files=uploads)
    idle(pg)
    pg.get_by_role("button", name="Run batch").click()
    pg.get_by_text("Masks per image").wait_for(timeout=120_000)
    idle(pg)
    shot(pg, "batch", height=1500)
    with pg.expect_download() as dl:
        pg.get_by_role("button", name="Download all results (zip)").click()
    with zipfile.ZipFile(io.BytesIO(Path(dl.value.path()).read_bytes())) as zf:
        names = set(zf.namelist())
        summary = zf.read("summary.csv").decode()
    assert {f"upload_{i}/labels.tif" for i in range(3)} <= names
    assert {"objects.parquet", "objects.csv", "manifest.json"} <= names
    assert summary.count(",done,") == 3

    # -- Examples & about -----------------------------------------------------------------
    go(pg, "Examples & about", "Examples & about")
    shot(pg, "about")

    # -- a second user (another browser session) sees none of this -------------------------
    other = pg.context.browser.new_context().new_page()
    other.goto(pg.url.rsplit("/", 1)[0] + "/prompts")
    other.get_by_text("No image yet").wait_for()
    assert other.get_by_text("Objects:").count() == 0
    other.context.close()


def assert_no_server_folders(pg, checkpoint: Path) -> None:
    """The page shows neither the checkpoint's folder nor the temporary cache folder."""
    text = pg.locator("body").inner_text()
    assert str(checkpoint.parent) not in text and "/tmp/" not in text


def prompt_table(pg) -> list[list]:
    """The rows of the prompt table on the Prompts page: [kind, x, y, (x1, y1)]."""
    rows = []
    for tr in pg.locator('[data-testid="stTable"] tbody tr').all():
        cells = [c.inner_text().strip() for c in tr.locator("td, th").all()]
        cells = [c for c in cells if c != ""]
        kind = next(c for c in cells if not _is_num(c))
        rows.append([kind, *[float(c) for c in cells if _is_num(c)]])
    return rows


def _is_num(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def find_point_inside_a_candidate(model, emb, work):
    """A click position (pixel centre) well inside one of SAM's candidates for it.

    Returns ``(point_xy, candidate_index, candidate_mask)`` or None; the point has a 5x5
    pixel neighbourhood inside the mask, so a sub-pixel click offset cannot change the answer.
    An object-sized candidate (under 5 % of the image: a nucleus, for a trained model) is
    preferred to anything short of the whole image.
    """
    w, h = work.size_xy
    grid = [
        (float(int(x)) + 0.5, float(int(y)) + 0.5)
        for y in np.linspace(0.1 * h, 0.9 * h, 9)
        for x in np.linspace(0.1 * w, 0.9 * w, 9)
    ]
    candidates = []
    for x, y in grid:
        res = predict_candidates(
            model, emb, PromptSet(np.array([[x, y]]), np.array([1])), multimask=True
        )
        candidates.append(((x, y), res.masks[0]))
    for largest in (0.05, 0.9):
        for (x, y), masks in candidates:
            r, c = coords.xy_to_rowcol(x, y)
            for k, mask in enumerate(masks):
                if mask[r - 2 : r + 3, c - 2 : c + 3].all() and mask.mean() < largest:
                    return (x, y), k, mask
    return None
