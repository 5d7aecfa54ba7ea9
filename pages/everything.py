"""Segment everything (workshop chapter 3): grid prompts, live filters, histogram, exports."""

import streamlit as st

from samlib.app.everything_run import run_everything
from samlib.app.results import everything_recipe
from samlib.recipe import needs_embedding
from ui import everything_ui, results_ui, state, tiling_ui

st.title("Segment everything")
st.caption(
    "Workshop chapter 3. SAM is prompted with a grid of points; every answer that passes the "
    "quality filters becomes a mask. Run once, then tune the filters: they apply instantly, "
    "without running the model again."
)

work = state.require_image()
model = state.get_model()
state.context_caption(work, model)

with st.sidebar:
    st.header("Generator")
    params = everything_ui.generator_params_ui(model)
    tiling = tiling_ui.tiling_ui(model, work)
    run_clicked = st.button(
        "Run segment everything",
        type="primary",
        key="run_everything",
        icon=":material/play_arrow:",
        width="stretch",
    )

with st.expander("What each parameter does (workshop 3.2)"):
    everything_ui.param_help_ui()

run = st.session_state.get(state.EVERYTHING)
if run_clicked:
    whole = needs_embedding(tiling, work.rgb8.shape[:2])
    first = "Computing the image embedding..." if whole else "Segmenting tile 1..."
    bar = st.progress(0.0, text=first)

    def progress(done: int, total: int) -> None:
        what = "Decoding point batches" if whole else "Tiles segmented"
        bar.progress(done / max(total, 1), text=f"{what}: {done} of {total}")

    with state.guard("Segment everything"):
        emb = state.embedding_ui(model, work) if whole else None
        extra = {k: params.pop(k) for k in ("iou_floor", "stability_floor", "fast")}
        if extra["fast"]:  # fast mode decodes at the current live thresholds
            params.update(everything_ui.current_thresholds(model))
        run = run_everything(
            model, work, params, **extra, tiling=tiling, embedding=emb, progress=progress
        )
        st.session_state[state.EVERYTHING] = run
    bar.empty()

if run is None or run.image_key != work.key:
    st.info(
        "Set the generator parameters in the sidebar (the workshop's defaults are "
        "preselected) and press **Run segment everything**."
    )
    st.stop()

tiles_text = f" in {len(run.tiles)} tiles" if run.tiles else ""
st.caption(
    f"Last run: {run.n_candidates} candidate masks decoded{tiles_text} in {run.seconds:.1f} s "
    f"with {run.model_name}."
)

filters = everything_ui.filter_ui(run, model)
result = everything_ui.apply_filters(run, filters)
counts = st.container()  # filled below, once the area filter is known
if not result.records:
    with counts:
        everything_ui.counts_ui(result)
    st.warning(
        f"No mask passes these thresholds. Lower pred_iou_thresh or stability_score_thresh "
        f"(this run kept candidates down to {run.candidates.iou_floor:.2f} and "
        f"{run.candidates.stability_floor:.2f}), or lower the live-filter floors in the "
        "sidebar and run again.",
        icon=":material/filter_alt_off:",
    )
    st.stop()

hist, area = st.columns([3, 2], gap="large")
with area:
    area_range = everything_ui.area_ui(result, work)
result = everything_ui.apply_area(result, area_range)
with hist:
    everything_ui.histogram_ui(result, area_range)
with counts:
    everything_ui.counts_ui(result)

st.subheader(f"{len(result.kept)} masks")
results_ui.results_tabs_ui(
    work,
    result.kept,
    key="everything",
    recipe=everything_recipe(
        work,
        model,
        run,
        filters,
        area_range,
        drop_whole_image=st.session_state.get("_drop_whole_image", True),
    ),
    grid_points=run.grid_points,
    tiles=tiling_ui.tile_cores(run.tiles),
)
