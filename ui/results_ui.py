"""Views of a set of mask records shared by the Segment everything and Prompts pages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from samlib.app.results import download_makers, params_json, record_rows
from samlib.app.session import WorkImage
from samlib.evaluation import BaselineParams, segment_classical
from samlib.evaluation import metrics as evaluate
from samlib.outputs import measure, overlay
from samlib.outputs.export import EXPORTS
from samlib.recipe import Recipe
from samlib.records.masks import labels_from_records
from ui import state

LAYERS = ["masks", "outlines", "boxes", "grid points", "tile grid"]


def _memo(kind: str, sig: tuple, compute):
    """Reuse the last ``kind`` result of this session while ``sig`` is unchanged.

    Every widget change reruns the page; without this, each rerun would re-measure,
    re-draw and re-evaluate hundreds of masks.
    """
    store = st.session_state.setdefault("_views", {})
    if kind not in store or store[kind][0] != sig:
        store[kind] = (sig, compute())
    return store[kind][1]


def zoomable(rgb: np.ndarray, key: str, height: int = 620) -> None:
    """Show an RGB image in a Plotly view the user can zoom and pan (scroll, drag)."""
    fig = px.imshow(rgb, binary_string=True)
    fig.update_layout(margin=dict(l=0, r=0, t=0, b=0), height=height, dragmode="zoom")
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    st.plotly_chart(fig, key=key, config={"scrollZoom": True, "displaylogo": False})


def overlay_ui(
    work: WorkImage,
    records: Sequence[Mapping[str, Any]],
    key: str,
    grid_points: np.ndarray | None = None,
    tiles: Sequence[Sequence[int]] = (),
) -> None:
    """Overlay the records on the image with user-chosen layers, in a zoomable view.

    ``tiles``: XYXY cores of a tiled run, drawn as the "tile grid" layer (on at first)."""
    options = LAYERS[:3] + (["grid points"] if grid_points is not None else [])
    options += ["tile grid"] if len(tiles) else []
    default = ["masks", "outlines"] + (["tile grid"] if len(tiles) else [])
    layers = (
        st.pills(
            "Show",
            options,
            selection_mode="multi",
            default=default,
            key=f"w_layers_{key}_{len(tiles)}",
        )
        or []
    )
    sig = (_signature(work, records), tuple(layers), grid_points is None, tuple(map(tuple, tiles)))
    view = _memo(
        f"overlay_{key}",
        sig,
        lambda: overlay.render(
            work.rgb8,
            records,
            masks="masks" in layers,
            outlines="outlines" in layers,
            boxes="boxes" in layers,
            points=grid_points if "grid points" in layers else None,
            tiles=tiles if "tile grid" in layers else (),
        ),
    )
    zoomable(view, key=f"view_{key}")


def gallery_ui(work: WorkImage, records: Sequence[Mapping[str, Any]], key: str) -> None:
    """Each mask cropped from the image, largest first (workshop 3.3)."""
    n = len(records)
    if n == 0:
        st.info("No masks to show.")
        return
    show = st.slider("How many", 1, n, min(n, 24), key=f"w_gallery_n_{key}") if n > 1 else 1
    order = np.argsort([-r["area"] for r in records], kind="stable")[:show]
    crops = _memo(
        f"gallery_{key}",
        (_signature(work, records), show),
        lambda: overlay.instance_crops(work.rgb8, [records[i] for i in order]),
    )
    cols = st.columns(6)
    for j, (i, crop) in enumerate(zip(order, crops, strict=True)):
        with cols[j % 6]:
            st.image(crop, caption=f"#{i + 1}: {records[i]['area']} px", width="stretch")


def _signature(work: WorkImage, records: Sequence[Mapping[str, Any]]) -> tuple:
    """Identifies a set of records cheaply (to reuse prepared downloads)."""
    rows = tuple(
        (int(r["area"]), tuple(float(v) for v in r["bbox"]), float(r["predicted_iou"]))
        for r in records
    )
    return work.key, work.pixel_size_um, rows


def downloads_ui(
    work: WorkImage, records: Sequence[Mapping[str, Any]], key: str, recipe: Recipe
) -> None:
    """Build every export format on request, then offer one download button per file."""
    stem = work.name.rsplit(".", 1)[0]
    store = st.session_state.setdefault("_downloads", {})
    sig = _signature(work, records)
    files = store.get(key, (None, None))[1] if store.get(key, (None,))[0] == sig else None
    if files is None:
        st.caption(
            f"{len(records)} masks: label image (TIFF, PNG), measurements (CSV), COCO "
            "RLE JSON, one PNG per mask, ImageJ ROIs and the parameters (JSON)."
        )
        if st.button("Prepare downloads", key=f"prepare_{key}", icon=":material/package_2:"):
            with st.spinner("Writing files..."), state.guard("Preparing downloads"):
                makers = download_makers(work, records, params_json(work, recipe, len(records)))
                store[key] = (sig, {fmt: make() for fmt, make in makers.items()})
                st.rerun()
        return
    cols = st.columns(4)
    for j, (fmt, export) in enumerate(EXPORTS.items()):
        cols[j % 4].download_button(
            export.file_name,
            files[fmt],
            file_name=f"{stem}_{export.file_name}",
            mime=export.mime,
            help=export.what,
            key=f"dl_{key}_{fmt}",
            icon=":material/download:",
        )
    st.caption(
        "Label images: 0 = background, object i = record i; where masks overlap, the "
        "smaller one wins. ImageJ ROIs open in Fiji's ROI manager."
    )


def results_tabs_ui(
    work: WorkImage,
    records: Sequence[Mapping[str, Any]],
    key: str,
    recipe: Recipe,
    grid_points: np.ndarray | None = None,
    tiles: Sequence[Sequence[int]] = (),
) -> None:
    """Tabs: overlay, records, measurements, gallery, downloads (and evaluation if possible).

    ``tiles``: XYXY cores of a tiled run, for the overlay's tile grid."""
    names = ["Overlay", "Records", "Measurements", "Gallery", "Downloads"]
    if work.ground_truth is not None:
        names.append("Compare with reference")
    # Only the open tab runs: measuring or evaluating hundreds of masks on every slider move
    # would make the live filters anything but live.
    tabs = dict(zip(names, st.tabs(names, key=f"w_tabs_{key}", on_change="rerun"), strict=True))
    if tabs["Overlay"].open:
        with tabs["Overlay"]:
            overlay_ui(work, records, key, grid_points, tiles)
    if tabs["Records"].open:
        with tabs["Records"]:
            st.dataframe(
                pd.DataFrame(record_rows(records)),
                hide_index=True,
                width="stretch",
                key=f"records_{key}",
            )
    if tabs["Measurements"].open:
        with tabs["Measurements"], st.spinner("Measuring..."), state.guard("Measuring"):
            table = _memo(
                f"measure_{key}",
                _signature(work, records),
                lambda: measure.measure_records(
                    records,
                    work.image,
                    plane=work.settings.plane,
                    pixel_size_um=work.pixel_size_um,
                ),
            )
            st.dataframe(table, hide_index=True, width="stretch", key=f"measure_{key}")
    if tabs["Gallery"].open:
        with tabs["Gallery"]:
            gallery_ui(work, records, key)
    if tabs["Downloads"].open:
        with tabs["Downloads"]:
            with state.guard("Preparing downloads"):
                downloads_ui(work, records, key, recipe)
    if "Compare with reference" in tabs and tabs["Compare with reference"].open:
        with tabs["Compare with reference"], state.guard("Comparing with the reference"):
            evaluation_ui(work, records)


SCORES = ["precision", "recall", "f1", "ap", "mean_matched_iou"]
BASELINE_ROW = "classical baseline (Otsu + watershed)"


def evaluation_ui(work: WorkImage, records: Sequence[Mapping[str, Any]]) -> None:
    """Precision, recall, F1 and DSB average precision against the image's reference, beside
    the classical baseline's on the same image (what SAM adds over a threshold)."""

    def compute():
        pred = labels_from_records(records, shape=work.rgb8.shape[:2])
        return evaluate.evaluate(pred, work.ground_truth)

    result = _memo("evaluation", (*_signature(work, records), work.reference_key), compute)
    summary = result.summary()
    cols = st.columns(5)
    for col, name in zip(cols, SCORES, strict=True):
        col.metric(name.replace("_", " "), f"{summary[name]:.2f}")
    st.caption(
        f"{summary['n_pred']} masks against {summary['n_gt']} reference objects. Precision, "
        "recall and F1 at IoU 0.5; AP is the DSB2018 score, TP / (TP + FP + FN) averaged "
        "over IoU 0.5 to 0.95."
    )
    baseline = _memo(
        "baseline_evaluation",
        (work.key, work.reference_key),
        lambda: evaluate.evaluate(segment_classical(work.rgb8), work.ground_truth),
    ).summary()
    rows = [
        {"method": "SAM (these masks)", **{k: summary[k] for k in [*SCORES, "n_pred"]}},
        {"method": BASELINE_ROW, **{k: baseline[k] for k in [*SCORES, "n_pred"]}},
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="eval_methods")
    defaults = BaselineParams()
    st.caption(
        "The baseline has no model: pixels brighter than Otsu's threshold are objects, and a "
        "watershed of their distance to the background splits touching ones (seeds "
        f"{defaults.min_distance} px apart, objects of {defaults.min_area} px or more). Where "
        "it scores as well as SAM, a threshold is enough."
    )
    st.dataframe(result.per_threshold, hide_index=True, key="eval_table")
