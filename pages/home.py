"""Image & model: choose an image and how SAM sees it, and choose the model."""

import streamlit as st

from ui import image_ui, model_ui, state

st.title("Image & model")
st.caption(
    "Segment Anything (SAM) on microscopy images. Choose an image, check that the preview "
    "shows your structures clearly, pick a model, then use the pages on the left."
)

left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("1. Image")
    src = image_ui.source_ui()
    if src is not None:
        settings, pixel_size = image_ui.settings_ui(src)
        work = image_ui.apply_ui(src, settings, pixel_size)
    else:
        work = state.current_image()
with right:
    st.subheader("2. Model")
    model_ui.model_picker_ui()
    st.subheader("3. Preview")
    if work is None:
        st.info("Choose a sample or upload an image to see it here.")
    else:
        image_ui.preview_ui(work)
        st.page_link("pages/everything.py", label="Segment everything", icon=":material/grid_on:")
        st.page_link("pages/prompts.py", label="Segment with prompts", icon=":material/touch_app:")
