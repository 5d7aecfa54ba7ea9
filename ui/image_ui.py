"""Widgets of the Image & model page: image source, display settings, preview."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace

import numpy as np
import streamlit as st

from samlib.app.session import (
    MAX_UPLOADS,
    RecentUploads,
    WorkImage,
    prepare_image,
    reference_labels,
)
from samlib.datasets import samples
from samlib.errors import ImageWarning
from samlib.image.display import MAX_PROJECTION, DisplaySettings
from samlib.image.io import read_image
from samlib.image.microscopy import MicroscopyImage
from ui import state

UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff", "bmp"]
REFERENCE_TYPES = ["tif", "tiff", "png"]
REFERENCES = "references"  # {image hash: (upload key, (H, W) labels)}
UPLOADS = "uploads"  # session-state key of the session's RecentUploads


@dataclass(frozen=True, eq=False)
class Source:
    """An image as loaded, before display settings: data, reference labels, description."""

    image: MicroscopyImage
    ground_truth: np.ndarray | None = None
    description: str = ""


@st.cache_resource(show_spinner="Loading sample...")
def _sample(name: str) -> Source:
    # Samples are read-only and identical for everyone: safe to share between sessions.
    image, gt, description = samples.load_sample(name)
    attribution = samples.sample_info(name).attribution
    return Source(image, gt, f"{description}\n\n*Source: {attribution}*")


def _read_upload(upload) -> Source | None:
    """The image in an uploaded file, read once per session and found again by the upload's
    id (never by reading or hashing its bytes); None if it cannot be read (shown as an error).
    """
    uploads: RecentUploads = st.session_state.setdefault(UPLOADS, RecentUploads())
    if upload.file_id not in uploads:
        try:
            found: Source | Exception = _read_noted(upload)
        except Exception as exc:  # shown now, and again (without a new log line) on reruns
            state.show_error(f"Reading {upload.name}", exc)
            found = exc
        uploads.put(upload.file_id, found)
        return found if isinstance(found, Source) else None
    found = uploads.get(upload.file_id)
    if isinstance(found, Exception):
        state.show_error(f"Reading {upload.name}", found, log=False)
        return None
    return found


def _read_noted(upload) -> Source:
    """Read an upload; what the reader warns about (e.g. dropped TIFF series) becomes a note
    shown under the preview, for as long as the image is in use."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ImageWarning)
        image = read_image(upload, name=upload.name)
    notes = []
    for w in caught:
        if issubclass(w.category, ImageWarning):
            notes.append(f"**Note:** {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return Source(image, description="\n\n".join(notes))


def source_ui() -> Source | None:
    """Let the user pick a bundled sample or upload images; return the chosen one, with the
    reference labels uploaded for it (if any)."""
    src = _pick_source()
    return None if src is None else reference_ui(src)


def _pick_source() -> Source | None:
    kind = state.kept(
        st.radio,
        "Image source",
        "source_kind",
        "Bundled sample",
        options=["Bundled sample", "Upload"],
        horizontal=True,
    )
    if kind == "Bundled sample":
        names = samples.list_samples()
        name = state.kept(st.selectbox, "Sample", "sample_name", names[0], options=names)
        with state.guard(f"Loading sample {name}"):
            return _sample(name)
        return None
    files = st.file_uploader(
        "Images (PNG, JPEG, BMP, TIFF: 8/16/32-bit, z-stacks, multichannel)",
        type=UPLOAD_TYPES,
        accept_multiple_files=True,
        key="w_uploads",
    )
    files = list(files or [])
    if len(files) > MAX_UPLOADS:
        st.warning(
            f"This app keeps the last {MAX_UPLOADS} uploaded images; "
            f"{', '.join(f.name for f in files[:-MAX_UPLOADS])} left out. Remove images "
            "from the list to work on others.",
            icon=":material/photo_library:",
        )
    for f in files[-MAX_UPLOADS:]:
        _read_upload(f)
    # The newest uploads stay available after a page change (the uploader widget itself
    # forgets its files when another page runs).
    uploads: RecentUploads = st.session_state.get(UPLOADS) or RecentUploads()
    loaded = [s for s in uploads.values() if isinstance(s, Source)]
    if not loaded:
        return None
    if len(loaded) == 1:
        return loaded[0]
    names = [s.image.name for s in loaded]
    choice = state.kept(st.selectbox, "Work on", "upload_pick", names[-1], options=names)
    pick = names.index(choice) if choice in names else len(loaded) - 1
    return loaded[pick]


def reference_ui(src: Source) -> Source:
    """Offer a reference label image for ``src``; return ``src`` with it as ground truth.

    A reference is kept per image for the session (the uploader forgets its file when
    another page runs); one that does not fit the image is one error line and not kept.
    """
    refs = st.session_state.setdefault(REFERENCES, {})
    # a new uploader (a new key) after "Forget", so that its file is not read again
    rounds = st.session_state.setdefault("reference_rounds", {})
    img = src.image
    tag = hashlib.sha256(img.hash.encode()).hexdigest()[:8]
    upload = st.file_uploader(
        "Reference labels (optional)",
        type=REFERENCE_TYPES,
        key=f"w_reference_{tag}_{rounds.get(img.hash, 0)}",
        help="A label image of this image (TIFF or PNG, same width and height, 0 = "
        "background, one whole number per object): results are then scored against it in "
        "the Compare with reference tab.",
    )
    if upload is not None:
        key = f"{upload.name}:{upload.file_id}"
        if refs.get(img.hash, ("",))[0] != key:
            refs.pop(img.hash, None)
            with state.guard(f"Reading the reference labels {upload.name}"):
                refs[img.hash] = (key, reference_labels(img, upload.getvalue(), name=upload.name))
    if img.hash not in refs:
        return src
    if st.button("Forget the reference labels", key=f"forget_reference_{tag}"):
        del refs[img.hash]
        rounds[img.hash] = rounds.get(img.hash, 0) + 1
        st.rerun()
    return replace(src, ground_truth=refs[img.hash][1])


def settings_ui(src: Source) -> tuple[DisplaySettings, float | None]:
    """Channel mapping, percentiles, gamma, plane and pixel size for ``src``; return them."""
    img = src.image
    # Widget names carry the image hash so every image remembers its own settings.
    tag = img.hash[:8]
    default = DisplaySettings.default_for(img)
    cols = st.columns(3)
    channels = list(default.channels)
    if img.n_channels > 1:
        options = [None, *range(img.n_channels)]
        for k, colour in enumerate("RGB"):
            with cols[k]:
                channels[k] = state.kept(
                    st.selectbox,
                    f"{colour} channel",
                    f"ch{colour}_{tag}",
                    default.channels[k],
                    options=options,
                    format_func=lambda c: "none" if c is None else f"channel {c}",
                    help="Which source channel is shown in this colour (SAM sees RGB).",
                )
    plane: int | str = 0
    if img.n_planes > 1:
        planes = [MAX_PROJECTION, *range(img.n_planes)]
        plane = state.kept(
            st.select_slider,
            "Plane (z / time)",
            f"plane_{tag}",
            0,
            options=planes,
            format_func=lambda p: "max projection" if p == MAX_PROJECTION else str(p),
        )
    low, high = state.kept(
        st.slider,
        "Percentile range mapped to black..white",
        f"pct_{tag}",
        (1.0, 99.8),
        min_value=0.0,
        max_value=100.0,
        step=0.1,
        help="Per channel: values below the low percentile become black, above the high "
        "percentile white. Widen it if the image looks washed out.",
    )
    gamma = state.kept(
        st.slider,
        "Gamma",
        f"gamma_{tag}",
        1.0,
        min_value=0.2,
        max_value=3.0,
        step=0.05,
        help="Below 1 brightens dim structures; 1 is linear.",
    )
    px = state.kept(
        st.number_input,
        "Pixel size (µm/px, 0 = unknown)",
        f"px_{tag}",
        float(img.pixel_size_um or 0.0),
        min_value=0.0,
        step=0.01,
        format="%.4f",
        help="Used to report areas in µm² as well as pixels.",
    )
    settings = DisplaySettings(tuple(channels), (float(low), float(high)), float(gamma), plane)
    return settings, (float(px) if px > 0 else None)


def apply_ui(src: Source, settings: DisplaySettings, pixel_size: float | None) -> WorkImage | None:
    """Make ``src`` with ``settings`` the session's current image (kept if unchanged)."""
    current = state.current_image()
    if (
        current is not None
        and current.image is src.image
        and current.ground_truth is src.ground_truth
        and current.settings == settings
        and current.pixel_size_um == pixel_size
    ):
        return current
    with state.guard("Preparing the image"):
        work = prepare_image(
            src.image,
            settings,
            pixel_size_um=pixel_size,
            ground_truth=src.ground_truth,
            description=src.description,
        )
        st.session_state[state.IMAGE] = work
        return work
    return current


def preview_ui(work: WorkImage) -> None:
    """Show what SAM will see, with the image's shape and type."""
    st.image(work.rgb8, caption=f"What SAM sees: {work.name}", width="stretch")
    st.caption(work.image.describe())
    if work.description:
        st.markdown(work.description)
    if work.ground_truth is not None:
        n = len(np.unique(work.ground_truth)) - 1
        st.caption(f"Reference segmentation available: {n} objects (used for evaluation).")


@st.cache_resource(show_spinner=False)
def sample_thumbnail(name: str, size: int = 256) -> np.ndarray:
    """A small RGB preview of a bundled sample with its default display settings."""
    work = prepare_image(_sample(name).image)
    step = max(1, max(work.rgb8.shape[:2]) // size)
    return work.rgb8[::step, ::step]
