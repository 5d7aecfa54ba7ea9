"""Widgets of the Prompts page: embedding, canvas tools, typed prompts, candidates, objects."""

from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from samlib import coords
from samlib.app.canvas import (
    BACKGROUND_COLOR,
    BOX_COLOR,
    FOREGROUND_COLOR,
    merge_prompts,
    prompts_from_canvas,
    typed_box,
)
from samlib.app.session import WorkImage
from samlib.errors import PromptError
from samlib.outputs import overlay
from samlib.prompts.objects import PromptSet
from ui import state

TOOLS = {
    "Foreground point": ("point", FOREGROUND_COLOR),
    "Background point": ("point", BACKGROUND_COLOR),
    "Box": ("rect", BOX_COLOR),
}
#: Canvas widths offered (px); the default fits beside the candidates on a laptop screen.
CANVAS_WIDTHS = [320, 450, 640, 800, 1000]
SIDE_BY_SIDE_MAX = 450  # wider canvases put the candidates below the image
PREVIEW_WIDTH = 400  # candidate previews are downsampled to about this width (px)


def tool_ui() -> tuple[str, str]:
    """Tool picker; return (drawing mode, stroke colour).

    It takes the left of its row: the canvas toolbar floats above the canvas's right end.
    """
    with st.columns([3, 2])[0]:
        tool = state.kept(
            st.radio,
            "Tool",
            "prompt_tool",
            "Foreground point",
            options=list(TOOLS),
            horizontal=True,
            help="Click to add points; drag to draw boxes (several allowed). "
            "The canvas toolbar undoes or clears prompts.",
        )
    return TOOLS[tool]


def mask_options_ui() -> tuple[bool, bool]:
    """The two mask switches; return (multimask, keep masks inside their box)."""
    cols = st.columns(2)
    with cols[0]:
        multimask = state.kept(
            st.toggle,
            "Three candidates",
            "multimask",
            True,
            help="On: SAM proposes 3 masks (part, object, group) with a "
            "predicted IoU each (SAM's multimask output). Off: one mask.",
        )
    with cols[1]:
        clip = state.kept(
            st.toggle,
            "Keep inside box",
            "clip_to_box",
            True,
            help="On: a box's masks stop at the box (widened to any foreground point), so "
            "they cannot spill into a neighbour. Off: SAM's masks as they are.",
        )
    return multimask, clip


def canvas_width_ui() -> int:
    """The canvas width the user wants (a projector in a workshop wants it large)."""
    return state.kept(
        st.select_slider,
        "Canvas width (px)",
        "canvas_width",
        SIDE_BY_SIDE_MAX,
        options=CANVAS_WIDTHS,
        help="The image is shown at this width, enlarged or reduced; clicks map to image "
        "pixels at any width. Wider than 450 px puts the candidates below the image.",
    )


def canvas_ui(
    work: WorkImage, mode: str, colour: str, generation: int, max_width: int
) -> PromptSet:
    """Show the image on a drawing canvas; return the drawn prompts in image pixels."""
    image_size = work.size_xy
    canvas_size = coords.fit_width(image_size, max_width)
    background = Image.fromarray(work.rgb8).resize(canvas_size, Image.Resampling.BILINEAR)
    result = st_canvas(
        background_image=background,
        width=canvas_size[0],
        height=canvas_size[1],
        drawing_mode=mode,
        stroke_color=colour,
        stroke_width=2,
        point_display_radius=4,
        fill_color="rgba(0, 180, 255, 0.08)",
        key=f"canvas_{work.key[:12]}_{generation}",
    )
    return prompts_from_canvas(result.json_data, canvas_size, image_size)


def typed_prompts_ui(work: WorkImage) -> PromptSet:
    """Prompts typed as numbers (precise, keyboard-only); kept in session state."""
    typed: PromptSet = st.session_state.get("typed_prompts") or PromptSet()
    width, height = work.size_xy
    with st.expander("Type prompt coordinates (image pixels)"):
        c = st.columns(3)
        x = c[0].number_input("x", 0.0, float(width), float(width // 2), key="w_typed_x")
        y = c[1].number_input("y", 0.0, float(height), float(height // 2), key="w_typed_y")
        fg = c[2].toggle("foreground", True, key="w_typed_fg")
        b = st.columns(3)
        if b[0].button("Add point", key="typed_add_point"):
            typed = merge_prompts(typed, PromptSet(np.array([[x, y]]), np.array([int(fg)])))
        box = st.text_input("Box x0, y0, x1, y1", key="w_typed_box")
        if b[1].button("Add box", key="typed_add_box") and box:
            try:
                typed = merge_prompts(typed, typed_box(box))
            except PromptError as exc:
                st.error(str(exc))
        if b[2].button("Forget typed prompts", key="typed_clear"):
            typed = PromptSet()
    st.session_state["typed_prompts"] = typed
    return typed


def candidates_ui(
    work: WorkImage, masks: np.ndarray, scores: np.ndarray, prompts: PromptSet
) -> int:
    """Show candidate masks side by side with their predicted IoU; return the picked index."""
    cols = st.columns(len(masks))
    for i, (col, mask, score) in enumerate(zip(cols, masks, scores, strict=True)):
        with col:
            view = overlay.draw_prompts(
                overlay.color_masks(work.rgb8, [mask]),
                prompts.points,
                prompts.labels,
                prompts.boxes,
            )
            step = max(1, view.shape[1] // PREVIEW_WIDTH)  # small previews keep clicks snappy
            st.image(
                view[::step, ::step],
                caption=f"Candidate {i + 1}: predicted IoU {score:.3f}",
                width="stretch",
            )
    # New prompts: preselect the best candidate (the user's earlier pick was for others).
    sig = (prompts.points.tobytes(), prompts.labels.tobytes(), prompts.boxes.tobytes(), len(masks))
    if st.session_state.get("_pick_sig") != sig or "w_pick" not in st.session_state:
        st.session_state["_pick_sig"] = sig
        st.session_state["w_pick"] = int(np.argmax(scores))
    return st.radio(
        "Keep candidate",
        range(len(masks)),
        horizontal=True,
        format_func=lambda i: f"{i + 1} (IoU {scores[i]:.2f})",
        key="w_pick",
    )


def objects_view(work: WorkImage, masks: np.ndarray, prompts: PromptSet) -> np.ndarray:
    """The image with the given masks coloured and the prompts drawn on top."""
    view = overlay.render(work.rgb8, list(masks), boxes=False)
    return overlay.draw_prompts(view, prompts.points, prompts.labels, prompts.boxes)
