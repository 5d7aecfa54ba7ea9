"""Prompts (workshop chapter 4): points and boxes on the image, candidates, object list."""

import pandas as pd
import streamlit as st

from samlib.app.canvas import merge_prompts
from samlib.app.results import prompts_recipe
from samlib.prompts.objects import records_of
from samlib.tiling.prompts import prompt_candidates
from ui import prompt_ui, results_ui, state, tiling_ui

st.title("Segment with prompts")
st.caption(
    "Workshop chapter 4. Click on an object (green: foreground point, red: background "
    "point) or drag a box. SAM answers with candidate masks; keep the best one as an object."
)

work = state.require_image()
model = state.get_model()
state.context_caption(work, model)
objects: list = st.session_state.setdefault(state.OBJECTS, {}).setdefault(work.key, [])
# the tiling the objects were made with: kept while they exist, so that their recipe says it
made_with: dict = st.session_state.setdefault("_objects_tiling", {})
generation = st.session_state.setdefault("canvas_generation", 0)

with st.sidebar:
    width = prompt_ui.canvas_width_ui()
    locked = "Clear the objects to change the tiles." if objects else ""
    tiling = tiling_ui.tiling_ui(model, work, locked=locked)
if objects:
    tiling = made_with.get(work.key)
source = None
with state.guard("Computing the image embedding"):
    if tiling is None:
        source = state.embedding_ui(model, work)
    else:
        source = tiling_ui.tiled_embeddings(model, work, tiling)
if source is None:
    st.stop()


def _accept(new_objects: list) -> None:
    if not objects:
        made_with[work.key] = tiling
    objects.extend(new_objects)
    st.session_state["canvas_generation"] += 1  # a fresh, empty canvas for the next object
    st.session_state["typed_prompts"] = None


if width <= prompt_ui.SIDE_BY_SIDE_MAX:
    left, right = st.columns([3, 2], gap="large")
else:
    left, right = st.container(), st.container()
with left:
    mode, colour = prompt_ui.tool_ui()
    drawn = prompt_ui.canvas_ui(work, mode, colour, generation, width)
    multimask, clip = prompt_ui.mask_options_ui()
    prompts = merge_prompts(drawn, prompt_ui.typed_prompts_ui(work))

with right:
    st.subheader("Candidates")
    if prompts.empty:
        st.info("Click on an object in the image, or drag a box around it.")
    else:
        st.table(
            pd.DataFrame(prompts.as_rows()).style.format(precision=1, na_rep=""), hide_index=True
        )
        result = None
        with state.guard("Prompting SAM"):
            result = prompt_candidates(
                model, source, prompts, multimask=multimask, clip_to_box=clip
            )
        if result is not None and len(prompts.boxes) > 1:
            st.image(
                prompt_ui.objects_view(work, result.best_masks(), prompts),
                caption=f"{len(prompts.boxes)} boxes, one mask each",
                width="stretch",
            )
            if st.button(f"Add {len(prompts.boxes)} objects", type="primary", key="add_objects"):
                _accept(result.objects(None))
                st.rerun()
        elif result is not None:
            pick = prompt_ui.candidates_ui(work, result.masks[0], result.scores[0], prompts)
            if st.button("Add to objects", type="primary", key="add_object", icon=":material/add:"):
                _accept(result.objects(pick))
                st.rerun()

    st.subheader(f"Objects: {len(objects)}")
    c1, c2 = st.columns(2)
    if c1.button("Undo last", key="undo_object", disabled=not objects, icon=":material/undo:"):
        objects.pop()
        st.rerun()
    if c2.button("Clear all", key="clear_objects", disabled=not objects, icon=":material/delete:"):
        objects.clear()
        st.rerun()

if objects:
    st.divider()
    st.subheader("Accepted objects")
    records = records_of(objects)
    recipe = prompts_recipe(work, model, objects, tiling)
    tiles = tiling_ui.tile_cores(source.tiles) if tiling is not None else []
    results_ui.results_tabs_ui(work, records, key="prompts", recipe=recipe, tiles=tiles)
else:
    st.caption(
        "Accepted objects appear here as a label image, a measurement table and "
        "downloads (label TIFF/PNG, CSV, COCO JSON, ImageJ ROIs)."
    )
