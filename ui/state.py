"""Per-session state, the shared model cache, and error display for the Streamlit pages.

Everything a user works on (image, results, prompts) lives in ``st.session_state``, which
Streamlit keeps per browser session, so two users never see each other's data. Only the
model weights and the embedding cache (keyed by image content hash) are shared between
sessions, through ``st.cache_resource``; neither holds per-user mutable state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from samlib import errors
from samlib.app.server import model_label, without_folder
from samlib.app.session import WorkImage, estimate_encode_seconds
from samlib.models.embeddings import Embedding, EmbeddingCache, embedding_key
from samlib.models.loading import cache_dir, default_model_name, load_model, pick_device

# Session-state keys (one place, so pages and tests agree on them).
IMAGE = "work_image"  # WorkImage the pages work on
MODEL = "model_name"  # registry name or checkpoint path
EVERYTHING = "everything"  # ui.everything_state.EverythingRun of the current image
OBJECTS = "prompt_objects"  # {image key: [PromptedObject, ...]}
_ENCODE_SECONDS = "encode_seconds"  # {model name: last measured seconds}
_EMBEDDING = "_last_embedding"  # ((model name, model id, image key), Embedding)

_LOG = logging.getLogger(__name__)

# What to do about each kind of error, in words a biologist acts on.
_HINTS: list[tuple[type[BaseException], str]] = [
    (
        errors.ReferenceLabelsError,
        "Upload the label image made for this image: one plane, 0 = background, one whole "
        "number per object (e.g. a label TIFF from Fiji or from this app's downloads).",
    ),
    (errors.UnsupportedImageError, "Use a PNG, JPEG, BMP or TIFF file."),
    (errors.CorruptImageError, "The file looks damaged or empty: export it again and re-upload."),
    (errors.ImageTooLargeError, "Crop or downsample the image (e.g. in Fiji) and upload again."),
    (errors.ChecksumError, "The damaged file was removed: download the model again."),
    (
        errors.DownloadError,
        "Check the internet connection, or copy the checkpoint file into the cache folder "
        "on the server (`samlib check` prints where).",
    ),
    (
        errors.ModelNotDownloadedError,
        "Download it on the Image & model page, or pick another model there.",
    ),
    (errors.UnknownModelError, "Pick a model from the list, or check the checkpoint path."),
    (errors.CheckpointError, "Use an official SAM, micro-sam or samlib checkpoint file."),
    (
        errors.TooManyPromptsError,
        "Add the objects a few at a time: undo some prompts, add the objects, then go on.",
    ),
    (errors.PromptError, "Place points and boxes inside the image and try again."),
    (errors.ParameterError, "Change the highlighted value and run again."),
]


def hint_for(exc: BaseException) -> str:
    """Return the advice shown under an error message."""
    for kind, hint in _HINTS:
        if isinstance(exc, kind):
            return hint
    if _is_out_of_memory(exc):
        return (
            "Out of memory: lower points_per_batch, use a smaller model, or a smaller image "
            "(crop, or choose one plane)."
        )
    return "Please try again; if it keeps happening, report it with this message."


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def show_error(action: str, exc: Exception, *, log: bool = True, path: str = "") -> None:
    """One ``st.error`` for ``exc``: what failed, the one-line reason, what to do.

    A :class:`~samlib.errors.SamlibError` is the user's to fix and is shown as it is; any
    other exception (a bug, a library's own error, memory) also goes, with its traceback,
    to the server's log (unless ``log`` is False: an error shown again), never to the
    browser. ``path``: a server file the reason may name, shown by its name only.
    """
    if log and not isinstance(exc, errors.SamlibError):
        _LOG.error("%s failed", action, exc_info=exc)
    reason = errors.one_line(exc)
    if path:
        reason = without_folder(reason, path)
    st.error(f"**{action} failed.** {reason}\n\n{hint_for(exc)}", icon=":material/error:")


@contextlib.contextmanager
def guard(action: str) -> Iterator[None]:
    """Show any exception raised inside as one ``st.error`` line (:func:`show_error`); keep
    the page.

    Earlier results stay in session state (a page stores a result only once it is made), so
    the page keeps showing them below the error. Streamlit's own ``st.stop``/``st.rerun``
    are not exceptions (``BaseException``) and pass through.
    """
    try:
        yield
    except Exception as exc:  # every failure of a page's action becomes one line
        show_error(action, exc)


def kept(widget: Callable[..., Any], label: str, name: str, default: Any, **kwargs: Any) -> Any:
    """Render ``widget`` whose value survives page changes; return its value.

    Streamlit forgets a widget's state when a page without it runs. The value is mirrored
    in ``st.session_state[name]`` and restored from there; the widget's own key is
    ``"w_" + name`` (what tests address).
    """
    wkey = "w_" + name
    if wkey not in st.session_state:
        st.session_state[wkey] = st.session_state.get(name, default)
    value = widget(label, key=wkey, **kwargs)
    st.session_state[name] = value
    return value


def current_image() -> WorkImage | None:
    """The image this session works on, or None."""
    return st.session_state.get(IMAGE)


def require_image() -> WorkImage:
    """Return the current image, or explain how to choose one and stop the page."""
    img = current_image()
    if img is None:
        st.info("No image yet: choose a sample or upload an image first.", icon=":material/image:")
        st.page_link("pages/home.py", label="Go to Image & model", icon=":material/arrow_back:")
        st.stop()
    return img


def model_name() -> str:
    """The model this session uses (default: ``samlib.models.loading.default_model_name()``)."""
    if MODEL not in st.session_state:
        st.session_state[MODEL] = default_model_name()
    return st.session_state[MODEL]


def _stamp(name_or_path: str) -> tuple[str, float]:
    """Cache-key part that changes when a checkpoint file is replaced."""
    p = Path(name_or_path).expanduser()
    return (str(p), p.stat().st_mtime) if p.is_file() else (name_or_path, 0.0)


@st.cache_resource(show_spinner=False, max_entries=2)
def _load(name_or_path: str, device: str, stamp: tuple[str, float]) -> Any:
    # Shared by all sessions: the Sam is only ever read (no predictor state is kept on it).
    # fused attention (and bfloat16 on GPUs when faithful): the same weights
    return load_model(name_or_path, device, fast_encoder=True)


def get_model(name_or_path: str | None = None) -> Any:
    """Load (once per process) and return the chosen model; on failure show why and stop."""
    name = name_or_path or model_name()
    label = model_label(name)  # visitors see no folder of the server
    try:
        with st.spinner(f"Loading model {label} (once per server)..."):
            return _load(name, str(pick_device()), _stamp(name))
    except Exception as exc:  # one line, as in guard(); the traceback goes to the log only
        show_error(f"Loading the model {label!r}", exc, path=name)
        st.page_link("pages/home.py", label="Choose a model", icon=":material/arrow_back:")
        st.stop()


@st.cache_resource(show_spinner=False)
def embedding_cache() -> EmbeddingCache:
    """The process-wide embedding cache (memory LRU + disk), keyed by model+image+settings."""
    folder = None if os.environ.get("SAMLIB_NO_DISK_CACHE") else cache_dir() / "embeddings"
    return EmbeddingCache(directory=folder, max_items=8)


def embedding_ui(model, work: WorkImage) -> Embedding:
    """Return the image embedding, computing it once (spinner with a time estimate).

    The session keeps the last one it used, found again by the model and ``work.key`` (a
    hash computed once per image), so that a rerun (every click on the Prompts page) does
    not hash the image again to look it up in the shared cache.
    """
    mine = (model.samlib_info.name, id(model), work.key)
    last = st.session_state.get(_EMBEDDING)
    if last is not None and last[0] == mine:
        return last[1]
    emb = _shared_embedding(model, work)
    st.session_state[_EMBEDDING] = (mine, emb)
    return emb


def _shared_embedding(model, work: WorkImage) -> Embedding:
    cache = embedding_cache()
    settings = work.settings.as_dict()
    if embedding_key(model, work.rgb8, settings) in cache:
        return cache.get(model, work.rgb8, settings)
    name = model.samlib_info.name
    measured = st.session_state.setdefault(_ENCODE_SECONDS, {})
    n_params = sum(p.numel() for p in model.image_encoder.parameters())
    guess = measured.get(name) or estimate_encode_seconds(n_params, model.device.type)
    with st.spinner(f"Computing the image embedding (once per image, about {guess:.0f} s)..."):
        t0 = time.perf_counter()
        emb = cache.get(model, work.rgb8, settings)
        measured[name] = time.perf_counter() - t0
    return emb


def context_caption(work: WorkImage, model) -> None:
    """One line saying which image and model the page works on."""
    info = model.samlib_info
    cut = ""
    if model.mask_threshold != 0.0:  # a model calibrated to another mask cut than SAM's
        cut = f" · masks cut at logit {model.mask_threshold:g} (SAM: 0)"
    st.caption(
        f"Image **{work.name}** ({work.size_xy[0]}x{work.size_xy[1]} px) · model "
        f"**{info.name}** on {model.device}{cut}"
    )
