"""Batch: the current segment-everything settings over several images at once."""

from pathlib import Path

import plotly.express as px
import streamlit as st

from samlib.app.batch_run import (
    MAX_IMAGES,
    default_recipe,
    image_file,
    run_files,
    sample_file,
)
from samlib.app.results import everything_recipe
from samlib.app.session import prepare_image
from samlib.datasets.samples import list_samples, load_sample
from samlib.image.io import read_image
from ui import everything_ui, state

OUTCOME = "batch_outcome"

st.title("Batch")
st.caption(
    "Run the Segment everything page's current settings over several images: counts, "
    "areas per image, and one zip with every file. For whole experiments, the same run is "
    "`samlib batch FOLDER --recipe params.json` on the command line."
)

model = state.get_model()
work = state.current_image()
run = st.session_state.get(state.EVERYTHING)
if work is not None and run is not None and run.image_key == work.key:
    area = st.session_state.get("area_range") or (0, 2**62)
    recipe = everything_recipe(
        work,
        model,
        run,
        everything_ui.current_thresholds(model),
        area,
        drop_whole_image=st.session_state.get("_drop_whole_image", True),
    )
    st.success("Settings: the last run of **Segment everything** and its filters.")
else:
    recipe = default_recipe(model, work.settings if work is not None else None)
    st.info(
        "Settings: the generator's defaults and this model's suggested thresholds (run "
        "**Segment everything** first to use your own).",
        icon=":material/tune:",
    )
with st.expander("The recipe (params.json)"):
    st.json(recipe.to_dict(), expanded=False)

uploads = st.file_uploader(
    "Images",
    type=["tif", "tiff", "png", "jpg", "jpeg", "bmp"],
    accept_multiple_files=True,
    key="batch_uploads",
    help=f"Up to {MAX_IMAGES} images; each gets the same conversion to RGB as the current image.",
)
flat = [name for name in list_samples() if load_sample(name)[0].n_planes == 1]
samples = st.multiselect("Bundled samples", flat, key="batch_samples")
current = False
if work is not None and work.image.n_planes == 1:
    current = st.checkbox(f"The current image ({work.name})", value=True, key="batch_current")

if st.button("Run batch", type="primary", key="run_batch", icon=":material/play_arrow:"):
    bar = st.progress(0.0, text="Starting...")

    def progress(done: int, total: int, result) -> None:
        bar.progress(done / total, text=f"{done} of {total}: {result.name} {result.status}")

    with state.guard("The batch run"):
        files = [(f.name, f.getvalue()) for f in uploads or []]
        files += [sample_file(name) for name in samples]
        if current:
            files.append(image_file(work.image))
        st.session_state[OUTCOME] = run_files(files, recipe, model, progress=progress)
    bar.empty()

outcome = st.session_state.get(OUTCOME)
if outcome is None:
    st.stop()

counts = outcome.counts
c = st.columns(3)
c[0].metric("Images", counts["images"])
c[1].metric("Done", counts["done"])
c[2].metric("Failed", counts["failed"])
for r in outcome.report.results:
    if r.status == "failed":
        st.error(f"**{r.name}**: {r.error}")

done = {r.name: Path(r.path).name for r in outcome.report.results if r.status == "done"}


def open_image(name: str) -> None:
    """Make image ``name`` of the batch the session's image and show it segmented."""
    with state.guard("Opening the image"):
        image = read_image(outcome.inputs[done[name]], name=done[name])
        st.session_state[state.IMAGE] = prepare_image(image, recipe.image)
        st.switch_page("pages/everything.py")


clicked = []
left, right = st.columns(2, gap="large")
with left:
    fig = px.bar(outcome.summary, x="image", y="n_masks", title="Masks per image")
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=40, b=0))
    event = st.plotly_chart(fig, key="batch_counts", on_select="rerun", selection_mode="points")
    clicked += [pt.get("x") for pt in event.selection.points] if event else []
with right:
    if len(outcome.objects):
        fig = px.box(
            outcome.objects, x="image", y="area", points="all", log_y=True, title="Mask areas (px)"
        )
        fig.update_layout(height=320, margin=dict(l=0, r=0, t=40, b=0))
        event = st.plotly_chart(fig, key="batch_areas", on_select="rerun", selection_mode="points")
        clicked += [pt.get("x") for pt in event.selection.points] if event else []
st.caption("Click a bar or a point to open that image on the Segment everything page.")
table = outcome.summary.drop(columns=["path"])
table["error"] = table["error"].astype("string").fillna("")
st.dataframe(table, hide_index=True, key="batch_summary")
st.download_button(
    "Download all results (zip)",
    outcome.zip_bytes,
    file_name="batch_results.zip",
    mime="application/zip",
    key="batch_zip",
    icon=":material/download:",
    help="Per image: labels.tif, measurements.csv, params.json; for the run: objects.parquet, "
    "objects.csv, summary.csv, manifest.json.",
)

if done:
    col, button = st.columns([3, 1], vertical_alignment="bottom")
    pick = col.selectbox("Open an image in the app", list(done), key="batch_open")
    if button.button("Open", key="batch_open_button"):
        open_image(pick)
for name in clicked:
    if name in done:
        open_image(name)
