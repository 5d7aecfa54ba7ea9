"""Widgets of the model picker: registry models, custom checkpoints, download with progress."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from samlib.models.loading import REGISTRY, cache_dir, download_model, model_status, pick_device
from ui import state

CUSTOM = "Custom checkpoint file..."


def _mb(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 1e6:,.0f} MB"


def _save_upload(upload) -> Path:
    """Store an uploaded checkpoint in the cache folder under its content hash."""
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = cache_dir() / "uploads" / f"{Path(upload.name).stem}-{digest}{Path(upload.name).suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def _registry_ui(name: str) -> None:
    entry, status = REGISTRY[name], model_status(name)
    st.markdown(f"**{name}**: {entry.description}")
    if status.cached:
        st.success(f"Ready: {status.path} ({_mb(status.size)})", icon=":material/check:")
        return
    st.warning(
        f"Not downloaded yet ({_mb(entry.size)}). Download it here, or copy "
        f"`{entry.filename}` into `{status.path.parent}` on this computer.",
        icon=":material/download:",
    )
    if status.partial_bytes:
        st.caption(f"{_mb(status.partial_bytes)} already downloaded; the download resumes.")
    if st.button(f"Download {name}", key=f"download_{name}", icon=":material/download:"):
        bar = st.progress(0.0, text="Connecting...")

        def progress(done: int, total: int | None) -> None:
            frac = done / total if total else 0.0
            bar.progress(min(frac, 1.0), text=f"{done / 1e6:,.0f} of {_mb(total)}")

        with state.guard(f"Downloading {name}"):
            download_model(name, progress=progress)
            bar.progress(1.0, text="Done, checksum verified")
            st.rerun()


def _custom_ui() -> str | None:
    path = st.text_input(
        "Checkpoint path on this computer (.pth / .pt)",
        key="w_custom_path",
        help="An official SAM, a micro-sam or a samlib checkpoint; the architecture is "
        "detected from the weights.",
    )
    upload = st.file_uploader("...or upload a checkpoint", type=["pth", "pt"], key="w_ckpt_up")
    if upload is not None:
        return str(_save_upload(upload))
    if path:
        if not Path(path).expanduser().is_file():
            st.error(f"No file at {path!r}. Check the path (it is read on the server).")
            return None
        return path
    return None


def model_picker_ui() -> str:
    """Pick the session's model; return its registry name or checkpoint path."""
    current = state.model_name()
    options = list(REGISTRY)
    if current not in options:
        options.append(current)  # a checkpoint path (custom, or from $SAMLIB_MODEL)
    options.append(CUSTOM)
    labels = {n: f"{n} (ready)" if n in REGISTRY and model_status(n).cached else n for n in options}
    labels[CUSTOM] = CUSTOM
    choice = state.kept(
        st.selectbox,
        "Model",
        "model_choice",
        current,
        options=options,
        format_func=labels.__getitem__,
    )
    if choice == CUSTOM:
        chosen = _custom_ui()
    elif choice in REGISTRY:
        _registry_ui(choice)
        chosen = choice
    else:
        st.markdown(f"Checkpoint file `{choice}`")
        chosen = choice
    if chosen:
        st.session_state[state.MODEL] = chosen
        if st.button("Load and check this model", key="load_model", icon=":material/memory:"):
            model = state.get_model(chosen)
            cfg = model.samlib_info.config
            n = sum(p.numel() for p in model.parameters())
            accel = getattr(model, "samlib_accel", None) or {}
            st.success(
                f"Loaded **{model.samlib_info.name}**: {cfg.encoder} encoder, {n / 1e6:.1f} M "
                f"parameters, {cfg.img_size} px input, on {model.device}"
                + (" (fused attention)" if accel.get("sdpa") else ""),
                icon=":material/check:",
            )
    st.caption(
        f"Computations run on **{pick_device()}**. Models load once per server and are "
        "shared by all users; images and results stay private to each browser tab."
    )
    return st.session_state[state.MODEL]
