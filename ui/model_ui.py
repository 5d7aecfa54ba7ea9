"""Widgets of the model picker: registry models, custom checkpoints, download with progress.

Checkpoint paths on the server and checkpoint uploads are offered only when the person who
started the server turned them on (:class:`samlib.app.server.ServerPolicy`); an uploaded
checkpoint is kept in a folder of the session's own. Visitors see models by name, never by
the folder on the server they are read from.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import streamlit as st

from samlib import errors
from samlib.app.server import (
    ALLOW_PATHS_ENV,
    ALLOW_UPLOADS_ENV,
    ServerPolicy,
    SessionUploads,
    model_label,
    prune_idle_uploads,
)
from samlib.models.loading import REGISTRY, cache_dir, download_model, model_status, pick_device
from ui import state

CUSTOM = "Custom checkpoint file..."
_TOKEN = "upload_token"  # the session's random upload-folder name
_TRIED = "checkpoint_uploads"  # {uploader file_id: (kept path or None, refusal or None)}
_ROUND = "checkpoint_upload_round"  # bumped when uploads are deleted: a fresh, empty uploader


def _mb(n: int | None) -> str:
    return "size unknown" if n is None else f"{n / 1e6:,.0f} MB"


def server_policy() -> ServerPolicy:
    """The server owner's switches; all off (with a message saying why) when one is wrong."""
    try:
        return ServerPolicy.from_env()
    except errors.ParameterError as exc:
        st.error(f"**A server setting is wrong, so checkpoint paths and uploads are off.** {exc}")
        return ServerPolicy()


def session_uploads(policy: ServerPolicy) -> SessionUploads:
    """This session's uploaded checkpoints: a folder of its own in the cache."""
    token = st.session_state.setdefault(_TOKEN, secrets.token_hex(16))
    return SessionUploads(cache_dir() / "uploads", token, policy)


@st.cache_resource(show_spinner=False)
def _prune_at_start(root: str, idle_hours: float) -> None:
    """Once per server process (its first picker): delete uploads that sessions left behind."""
    prune_idle_uploads(root, idle_hours)


def _registry_ui(name: str) -> None:
    entry, status = REGISTRY[name], model_status(name)
    st.markdown(f"**{name}**: {entry.description}")
    if status.cached:
        st.success(f"Ready ({_mb(status.size)})", icon=":material/check:")
        return
    st.warning(
        f"Not downloaded yet ({_mb(entry.size)}). Download it here, or copy "
        f"`{entry.filename}` into the `checkpoints` folder of samlib's cache on the server "
        "(`samlib check` prints where).",
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


def _upload_ui(uploads: SessionUploads, label: str) -> str | None:
    """The checkpoint uploader; return the kept file of the upload it holds, or None."""
    cap = uploads.policy
    upload = st.file_uploader(
        label,
        type=["pth", "pt"],
        key=f"w_ckpt_up_{st.session_state.get(_ROUND, 0)}",
        help=f"Kept for this browser tab only: at most {cap.max_uploads} file(s) and "
        f"{cap.max_upload_mb:,g} MB, deleted after {cap.idle_hours:g} hours unused.",
    )
    kept = None
    if upload is not None:
        tried = st.session_state.setdefault(_TRIED, {})
        known = tried.get(upload.file_id)
        if known is None or (known[0] is not None and not Path(known[0]).is_file()):
            # each upload is hashed and written once, not on every rerun
            prune_idle_uploads(uploads.root, cap.idle_hours, keep=uploads.folder)
            try:
                tried[upload.file_id] = (str(uploads.add(upload.name, upload.getvalue())), None)
            except errors.SamlibError as exc:
                tried[upload.file_id] = (None, str(exc))
        kept, refusal = tried[upload.file_id]
        if refusal:
            st.error(refusal, icon=":material/block:")
    files = uploads.files()
    if files:
        uploads.touch()
        st.caption(
            f"Your uploaded checkpoints: {', '.join(p.name for p in files)} "
            f"({_mb(uploads.used_bytes())} of {cap.max_upload_mb:,g} MB)."
        )
        if st.button(
            "Delete my uploaded checkpoints", key="delete_uploads", icon=":material/delete:"
        ):
            if uploads.owns(state.model_name()):
                del st.session_state[state.MODEL]  # back to the default model
            uploads.clear()
            st.session_state[_TRIED] = {}
            st.session_state[_ROUND] = st.session_state.get(_ROUND, 0) + 1
            st.rerun()
    return kept


def _custom_ui(policy: ServerPolicy) -> str | None:
    """A checkpoint path on the server or an upload, as the policy allows; return its path."""
    uploads = session_uploads(policy)
    path = ""
    if policy.server_paths:
        path = st.text_input(
            "Checkpoint path on the server (.pth / .pt)",
            key="w_custom_path",
            help="An official SAM, a micro-sam or a samlib checkpoint; the architecture is "
            "detected from the weights.",
        )
    if policy.checkpoint_uploads:
        label = "...or upload a checkpoint" if policy.server_paths else "Upload a checkpoint"
        kept = _upload_ui(uploads, label + " (.pth / .pt)")
        if kept is not None:
            return kept
    if path:
        # another session's uploads are private: answered as if they did not exist
        if uploads.is_foreign(path) or not Path(path).expanduser().is_file():
            st.error(f"No checkpoint file at {path!r}. Check the path (it is read on the server).")
            return None
        return path
    return None


def _switches_caption(policy: ServerPolicy) -> None:
    """Say how the server's owner turns on what is off."""
    off = [
        f"`{var}=1` ({what})"
        for var, what, on in (
            (ALLOW_UPLOADS_ENV, "checkpoint uploads", policy.checkpoint_uploads),
            (ALLOW_PATHS_ENV, "checkpoint paths on the server", policy.server_paths),
        )
        if not on
    ]
    if off:
        st.caption(
            "To use a checkpoint file of your own, the server's owner starts the app with "
            + " or ".join(off)
            + "."
        )


def model_picker_ui() -> str:
    """Pick the session's model; return its registry name or checkpoint path."""
    policy = server_policy()
    _prune_at_start(str(cache_dir() / "uploads"), policy.idle_hours)
    current = state.model_name()
    options = list(REGISTRY)
    if current not in options:
        options.append(current)  # a checkpoint path (custom, or from $SAMLIB_MODEL)
    if policy.checkpoint_uploads:
        options += [str(p) for p in session_uploads(policy).files() if str(p) not in options]
    if policy.server_paths or policy.checkpoint_uploads:
        options.append(CUSTOM)
    labels = {
        n: f"{n} (ready)" if n in REGISTRY and model_status(n).cached else model_label(n)
        for n in options
    }
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
        chosen = _custom_ui(policy)
    elif choice in REGISTRY:
        _registry_ui(choice)
        chosen = choice
    else:
        st.markdown(f"Checkpoint file `{model_label(choice)}`")
        chosen = choice
    _switches_caption(policy)
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
