"""Widgets of the Segment everything page: generator parameters, live filters, histogram."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from samlib.app.everything_run import EverythingRun, area_filter, refilter_run
from samlib.app.session import WorkImage
from samlib.everything.params import OUTPUT_MODES, PARAM_HELP, GeneratorParams
from samlib.models.loading import suggested_params
from samlib.records.filters import FilterResult
from ui import state

DEFAULTS = GeneratorParams()
LIVE = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh")


def threshold_defaults(model: Any) -> dict[str, float]:
    """Starting values of the live filters (and any other parameter the model suggests)."""
    out = {name: float(getattr(DEFAULTS, name)) for name in LIVE}
    out.update(suggested_params(model))
    return out


def _use_suggested(values: dict[str, float]) -> None:
    for name, value in values.items():
        st.session_state["w_" + name] = value
        st.session_state[name] = value


def generator_params_ui(model: Any = None) -> dict[str, Any]:
    """Parameters that need a model run (grid, crops, stability offset); return them."""
    h = PARAM_HELP
    start = threshold_defaults(model)
    p: dict[str, Any] = {}
    p["points_per_side"] = state.kept(
        st.slider,
        "points_per_side",
        "points_per_side",
        DEFAULTS.points_per_side,
        min_value=4,
        max_value=64,
        help=h["points_per_side"],
    )
    p["points_per_batch"] = state.kept(
        st.select_slider,
        "points_per_batch",
        "points_per_batch",
        DEFAULTS.points_per_batch,
        options=[16, 32, 64, 128, 256],
        help=h["points_per_batch"],
    )
    p["stability_score_offset"] = state.kept(
        st.slider,
        "stability_score_offset",
        "stability_score_offset",
        DEFAULTS.stability_score_offset,
        min_value=0.1,
        max_value=3.0,
        step=0.1,
        help=h["stability_score_offset"],
    )
    with st.expander("Crops (zoomed-in tiles)"):
        p["crop_n_layers"] = state.kept(
            st.slider,
            "crop_n_layers",
            "crop_n_layers",
            DEFAULTS.crop_n_layers,
            min_value=0,
            max_value=3,
            help=h["crop_n_layers"],
        )
        p["crop_overlap_ratio"] = state.kept(
            st.slider,
            "crop_overlap_ratio",
            "crop_overlap_ratio",
            round(DEFAULTS.crop_overlap_ratio, 3),
            min_value=0.0,
            max_value=0.9,
            step=0.01,
            help=h["crop_overlap_ratio"],
        )
        p["crop_n_points_downscale_factor"] = state.kept(
            st.slider,
            "crop_n_points_downscale_factor",
            "crop_n_points_downscale_factor",
            DEFAULTS.crop_n_points_downscale_factor,
            min_value=1,
            max_value=4,
            help=h["crop_n_points_downscale_factor"],
        )
    with st.expander("Mask post-processing"):
        p["min_mask_region_area"] = state.kept(
            st.number_input,
            "min_mask_region_area (px)",
            "min_mask_region_area",
            int(start.get("min_mask_region_area", DEFAULTS.min_mask_region_area)),
            min_value=0,
            step=10,
            help=h["min_mask_region_area"],
        )
        p["output_mode"] = state.kept(
            st.selectbox,
            "output_mode",
            "output_mode",
            DEFAULTS.output_mode,
            options=list(OUTPUT_MODES),
            help=h["output_mode"],
        )
    p["fast"] = state.kept(
        st.toggle,
        "Fast mode (approximate)",
        "fast_mode",
        False,
        help="Several times faster with SAM's large models: a reorganised decoder and "
        "one-step upsampling. The masks match the exact ones at IoU >= 0.9 but boundaries "
        "can move by a pixel; live filters can then only get stricter.",
    )
    with st.expander("Live-filter floors"):
        p["iou_floor"] = state.kept(
            st.number_input,
            "Lowest pred_iou_thresh offered",
            "iou_floor",
            min(0.5, start["pred_iou_thresh"]),
            min_value=0.0,
            max_value=1.0,
            step=0.05,
            help="Candidates below this predicted IoU are dropped after the run, so the live "
            "filter cannot go lower. Lower keeps more (slower, more memory).",
        )
        p["stability_floor"] = state.kept(
            st.number_input,
            "Lowest stability_score_thresh offered",
            "stability_floor",
            min(0.5, start["stability_score_thresh"]),
            min_value=0.0,
            max_value=1.0,
            step=0.05,
            help="Same, for the stability score.",
        )
    st.caption(
        "Changing these needs a new run. The quality thresholds and NMS are live "
        "filters on the page: they apply instantly after a run."
    )
    return p


def param_help_ui() -> None:
    """A table of every generator parameter: default, what it does, and whether it is live."""
    live = {"pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"}
    rows = [
        {
            "parameter": name,
            "default": str(getattr(DEFAULTS, name)),
            "applies": "live (no re-run)" if name in live else "on Run",
            "effect": text,
        }
        for name, text in PARAM_HELP.items()
        if name != "point_grids"
    ]
    st.dataframe(rows, hide_index=True, width="stretch", key="param_help")


def current_thresholds(model: Any = None) -> dict[str, float]:
    """The live-filter values the user last set (the model's starting values before any)."""
    start = threshold_defaults(model)
    names = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh")
    return {n: float(st.session_state.get(n, start[n])) for n in names}


def filter_ui(run: EverythingRun, model: Any = None) -> dict[str, float]:
    """Live quality and duplicate filters (no model run); return their values."""
    names = ["pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"]
    if run.params.crop_n_layers:
        names.append("crop_nms_thresh")
    start = threshold_defaults(model)
    suggested = suggested_params(model)
    now = {k: st.session_state.get("w_" + k, st.session_state.get(k, start[k])) for k in suggested}
    if suggested and any(now[k] != v for k, v in suggested.items()):
        text = ", ".join(f"{k} {v:g}" for k, v in suggested.items())
        st.button(
            f"Use the thresholds suggested for this model ({text})",
            key="use_suggested",
            icon=":material/tune:",
            on_click=_use_suggested,
            args=(suggested,),
            help="This model's predicted IoUs and stability scores are not on SAM's scale, "
            "so SAM's defaults do not suit it. The suggested values were chosen on synthetic "
            "validation images; min_mask_region_area applies at the next run.",
        )
    f: dict[str, float] = {}
    for col, name in zip(st.columns(len(names)), names, strict=True):
        with col:
            f[name] = state.kept(
                st.slider,
                name,
                name,
                start[name],
                min_value=0.0,
                max_value=1.0,
                step=0.01,
                help=PARAM_HELP[name],
            )
    floors = run.candidates.iou_floor, run.candidates.stability_floor
    if f["pred_iou_thresh"] < floors[0] or f["stability_score_thresh"] < floors[1]:
        st.caption(
            f"This run kept candidates down to pred_iou {floors[0]:.2f} and stability "
            f"{floors[1]:.2f}; lower values act as those. Lower the floors in the sidebar "
            "and run again to see more."
        )
    return f


def apply_filters(run: EverythingRun, filters: dict[str, float]) -> FilterResult:
    """Re-filter the run's candidates (memoised per session: reruns cost nothing)."""
    memo = st.session_state.setdefault("_refilter_memo", {})
    sig = (id(run), tuple(sorted(filters.items())))
    if sig not in memo:
        memo.clear()
        with state.guard("Filtering"):
            memo[sig] = refilter_run(run, **filters)
    return memo.get(sig) or refilter_run(run)


def counts_ui(result: FilterResult) -> None:
    """The number of masks after each step."""
    c = st.columns(4)
    c[0].metric("Decoded candidates", result.n_candidates)
    c[1].metric(
        "After quality & NMS", len(result.records), delta=len(result.records) - result.n_candidates
    )
    c[2].metric(
        "After whole-image filter",
        result.n_after_outliers,
        delta=result.n_after_outliers - len(result.records),
    )
    c[3].metric(
        "After area filter", len(result.kept), delta=len(result.kept) - result.n_after_outliers
    )


def area_ui(result: FilterResult, work: WorkImage) -> tuple[int, int]:
    """Whole-image exclusion and the min/max area slider; return the area range (px)."""
    h, w = work.rgb8.shape[:2]
    drop = state.kept(
        st.checkbox,
        "Exclude whole-image masks",
        "drop_whole_image",
        True,
        help="Masks covering most of the image (the background) are not objects.",
    )
    st.session_state["_drop_whole_image"] = drop
    lo, hi = result.area_bounds(drop)
    log_x = state.kept(st.toggle, "Log area axis", "log_area", True)
    st.session_state["_log_area"] = log_x
    if drop and len(result.outliers) == len(result.records):
        st.caption(
            "Every mask covers most of the image: untick *Exclude whole-image masks* to see them."
        )
        return 0, 0
    if hi <= lo:
        st.caption(f"All masks have an area of {lo} px.")
        return lo, max(hi, lo)
    chosen = st.session_state.get("area_range", (lo, hi))
    value = (int(np.clip(chosen[0], lo, hi)), int(np.clip(chosen[1], lo, hi)))
    rng = st.slider(
        "Area range (px)",
        lo,
        hi,
        value,
        key=f"w_area_{lo}_{hi}",
        help="Keep masks whose area lies in this range (the histogram shades it).",
    )
    st.session_state["area_range"] = rng
    if work.pixel_size_um:
        a, b = (v * work.pixel_size_um**2 for v in rng)
        st.caption(f"= {a:,.1f} to {b:,.1f} µm² at {work.pixel_size_um} µm/px")
    return int(rng[0]), int(rng[1])


def apply_area(result: FilterResult, area_range: tuple[int, int]) -> FilterResult:
    """Apply the whole-image and area filters chosen in :func:`area_ui`."""
    drop = st.session_state.get("_drop_whole_image", True)
    return area_filter(result, area_range, drop_whole_image=drop)


def histogram_ui(result: FilterResult, area_range: tuple[int, int]) -> None:
    """Histogram of mask areas, coloured by filter outcome, with the kept range shaded."""
    log_x = st.session_state.get("_log_area", True)
    areas = result.areas.astype(float)
    status = result.status()
    fig = go.Figure()
    colours = {"kept": "#1f77b4", "outside area range": "#bbbbbb", "whole image": "#d62728"}
    xs = np.log10(np.maximum(areas, 1)) if log_x else areas
    for name, colour in colours.items():
        sel = status == name
        if sel.any():
            fig.add_histogram(
                x=xs[sel], name=f"{name} ({int(sel.sum())})", marker_color=colour, nbinsx=40
            )
    lo, hi = (np.log10(max(v, 1)) for v in area_range) if log_x else area_range
    fig.add_vrect(x0=lo, x1=hi, fillcolor="#1f77b4", opacity=0.08, line_width=0)
    fig.update_layout(
        barmode="stack",
        height=300,
        margin=dict(l=0, r=0, t=30, b=0),
        title="Mask areas",
        legend=dict(orientation="h", y=-0.25),
        xaxis_title="log10 area (px)" if log_x else "area (px)",
        yaxis_title="masks",
    )
    st.plotly_chart(fig, key="area_hist")
