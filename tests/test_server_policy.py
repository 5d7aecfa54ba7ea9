"""A shared server's switches: checkpoint paths and uploads, per-session uploads, no paths shown.

The policy is read from the environment (:class:`samlib.app.server.ServerPolicy`); the pages
are driven headless with AppTest as in ``test_app_pages.py``, each visitor a fresh AppTest.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

import samlib
from samlib.app.server import (
    ServerPolicy,
    SessionUploads,
    model_label,
    prune_idle_uploads,
    without_folder,
)
from samlib.errors import ParameterError, QuotaError
from tests.test_app_pages import ROOT, new_app, no_errors
from ui import state
from ui.model_ui import CUSTOM

SWITCHES = ("SAMLIB_ALLOW_SERVER_PATHS", "SAMLIB_ALLOW_CHECKPOINT_UPLOADS")
TOKEN_A, TOKEN_B = "a" * 32, "b" * 32


@pytest.fixture
def server_env(monkeypatch, tmp_path):
    """A server with both switches off, its cache in ``tmp_path / "cache"``."""
    for name in (*SWITCHES, "SAMLIB_UPLOAD_MAX_FILES", "SAMLIB_UPLOAD_MAX_MB", "SAMLIB_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    return monkeypatch


def shown_text(at: AppTest) -> str:
    """Everything the page sends to the browser: every element's message, tables as CSV."""
    parts = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        if getattr(node, "type", None) == "arrow_data_frame":
            parts.append(node.value.to_csv())
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    return "\n".join(parts)


def checkpoint_uploaders(at) -> list:
    """The model picker's checkpoint uploaders (the Image page also has image uploaders)."""
    return [u for u in at.file_uploader if u.key.startswith("w_ckpt_up")]


def custom_checkpoint(at: AppTest) -> AppTest:
    """Choose "Custom checkpoint file..." in the model picker."""
    at.selectbox(key="w_model_choice").set_value(CUSTOM).run()
    no_errors(at)
    return at


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    checkpoint_uploaders(at)[0].set_value((name, data, "application/octet-stream")).run()
    return at


# -- the policy ----------------------------------------------------------------------------
def test_policy_is_off_by_default_and_read_from_the_environment():
    assert ServerPolicy.from_env({}) == ServerPolicy()
    assert not ServerPolicy().server_paths and not ServerPolicy().checkpoint_uploads
    policy = ServerPolicy.from_env(
        {
            "SAMLIB_ALLOW_SERVER_PATHS": "1",
            "SAMLIB_ALLOW_CHECKPOINT_UPLOADS": "yes",
            "SAMLIB_UPLOAD_MAX_FILES": "3",
            "SAMLIB_UPLOAD_MAX_MB": "50.5",
        }
    )
    assert policy.server_paths and policy.checkpoint_uploads
    assert policy.max_uploads == 3 and policy.max_upload_bytes == 50_500_000
    on = {row["variable"]: row["value"] for row in policy.settings()}
    assert on["SAMLIB_ALLOW_SERVER_PATHS"] == "on"
    assert on["SAMLIB_ALLOW_CHECKPOINT_UPLOADS"] == "on"


@pytest.mark.parametrize(
    "name, value",
    [
        ("SAMLIB_ALLOW_SERVER_PATHS", "maybe"),
        ("SAMLIB_UPLOAD_MAX_FILES", "0"),
        ("SAMLIB_UPLOAD_MAX_FILES", "2.5"),
        ("SAMLIB_UPLOAD_MAX_MB", "-1"),
        ("SAMLIB_UPLOAD_IDLE_HOURS", "nan"),
    ],
)
def test_a_wrong_setting_is_refused_naming_its_variable(name, value):
    with pytest.raises(ParameterError, match=name) as info:
        ServerPolicy.from_env({name: value})
    assert "\n" not in str(info.value)


def test_session_uploads_keep_their_quota_and_dedupe(tmp_path):
    policy = ServerPolicy(checkpoint_uploads=True, max_uploads=2, max_upload_mb=0.001)
    mine = SessionUploads(tmp_path, TOKEN_A, policy)
    first = mine.add("weights.pt", b"x" * 400)
    assert first.parent == tmp_path / TOKEN_A and first.read_bytes() == b"x" * 400
    assert mine.add("again.pt", b"x" * 400).read_bytes() == b"x" * 400  # same bytes: no new room
    with pytest.raises(QuotaError, match="more than the 0.001 MB"):
        mine.add("big.pt", b"y" * 700)  # 1,100 bytes together
    second = mine.add("other.pth", b"z" * 500)
    with pytest.raises(QuotaError, match="already has 2 uploaded"):
        mine.add("third.pt", b"w")
    assert mine.files() == sorted(mine.files(), key=lambda p: p.stat().st_mtime)
    assert set(mine.files()) == {first, second}
    with pytest.raises(ParameterError, match="must end in .pt or .pth"):
        mine.add("notes.txt", b"")
    theirs = SessionUploads(tmp_path, TOKEN_B, policy)
    assert theirs.files() == [] and theirs.is_foreign(first) and not mine.is_foreign(first)
    mine.clear()
    assert not (tmp_path / TOKEN_A).exists()


def test_uploads_of_idle_sessions_are_pruned(tmp_path):
    policy = ServerPolicy(checkpoint_uploads=True)
    old = SessionUploads(tmp_path, TOKEN_A, policy)
    new = SessionUploads(tmp_path, TOKEN_B, policy)
    old.add("a.pt", b"a")
    new.add("b.pt", b"b")
    day_ago = time.time() - 24 * 3600
    os.utime(old.folder, (day_ago, day_ago))
    assert prune_idle_uploads(tmp_path, 12, keep=old.folder) == []  # the caller's own
    assert prune_idle_uploads(tmp_path, 12) == [old.folder]
    assert not old.folder.exists() and new.files()
    os.utime(new.folder, (day_ago, day_ago))
    new.touch()  # in use again
    assert prune_idle_uploads(tmp_path, 12) == [] and new.files()


def test_visitors_see_file_names_not_folders(tmp_path):
    path = tmp_path / "models" / "mine.pt"
    assert model_label(str(path)) == "mine.pt" and model_label("vit_b") == "vit_b"
    message = f"checkpoint file not found: {path}"
    assert without_folder(message, str(path)) == "checkpoint file not found: mine.pt"


# -- the pages -----------------------------------------------------------------------------
def test_with_the_switches_off_there_is_no_path_box_and_no_uploader(server_env):
    at = new_app().run()
    no_errors(at)
    assert CUSTOM not in at.selectbox(key="w_model_choice").options
    assert not at.text_input and not checkpoint_uploaders(at)
    caption = " ".join(c.value for c in at.caption)
    assert "SAMLIB_ALLOW_SERVER_PATHS=1" in caption
    assert "SAMLIB_ALLOW_CHECKPOINT_UPLOADS=1" in caption
    at.switch_page("pages/system_check.py").run()
    no_errors(at)
    switches = next(df.value for df in at.dataframe if "variable" in df.value.columns)
    assert switches.set_index("variable").loc[list(SWITCHES), "value"].tolist() == ["off", "off"]


def test_server_paths_on_load_a_checkpoint_by_its_path(server_env, tiny_checkpoint):
    server_env.setenv("SAMLIB_ALLOW_SERVER_PATHS", "1")
    at = custom_checkpoint(new_app().run())
    assert not checkpoint_uploaders(at)  # uploads stay off
    assert "SAMLIB_ALLOW_CHECKPOINT_UPLOADS=1" in " ".join(c.value for c in at.caption)
    at.text_input(key="w_custom_path").set_value(str(tiny_checkpoint)).run()
    no_errors(at)
    assert at.session_state[state.MODEL] == str(tiny_checkpoint)
    at.button(key="load_model").click().run()
    no_errors(at)
    assert "Loaded **tiny**" in " ".join(s.value for s in at.success)
    at.switch_page("pages/system_check.py").run()
    switches = next(df.value for df in at.dataframe if "variable" in df.value.columns)
    assert switches.set_index("variable").loc[list(SWITCHES), "value"].tolist() == ["on", "off"]


def test_an_upload_stays_in_its_session(server_env, tiny_checkpoint, tmp_path):
    for name in SWITCHES:
        server_env.setenv(name, "1")
    first = upload(custom_checkpoint(new_app().run()), "mine.pt", tiny_checkpoint.read_bytes())
    no_errors(first)
    kept = Path(first.session_state[state.MODEL])
    assert kept.read_bytes() == tiny_checkpoint.read_bytes()
    uploads = tmp_path / "cache" / "uploads"
    assert kept.parent.parent == uploads  # in a folder of this session's own
    first.button(key="load_model").click().run()
    no_errors(first)
    assert "Loaded **mine-" in " ".join(s.value for s in first.success)

    second = custom_checkpoint(new_app().run())
    options = second.selectbox(key="w_model_choice").options
    assert not any(kept.name in o for o in options)  # not offered
    second.text_input(key="w_custom_path").set_value(str(kept)).run()
    assert any("No checkpoint file at" in e.value for e in second.error)
    assert second.session_state[state.MODEL] != str(kept)  # not loadable by its path either
    upload(second, "theirs.pt", b"not the same bytes")
    assert Path(second.session_state[state.MODEL]).parent != kept.parent

    first.button(key="delete_uploads").click().run()
    no_errors(first)
    assert not kept.parent.exists()
    assert first.session_state[state.MODEL] != str(kept)  # back to a model that exists


def test_the_quota_refuses_one_upload_too_many_in_one_line(server_env, tmp_path):
    server_env.setenv("SAMLIB_ALLOW_CHECKPOINT_UPLOADS", "1")
    server_env.setenv("SAMLIB_UPLOAD_MAX_FILES", "2")
    at = custom_checkpoint(new_app().run())
    for i in range(2):
        upload(at, f"model{i}.pt", bytes([i]) * 100)
        no_errors(at)
    upload(at, "model2.pt", b"\x02" * 100)
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "model2.pt was not kept" in message and "\n" not in message
    kept = list((tmp_path / "cache" / "uploads").rglob("*.pt"))
    assert sorted(p.name.split("-")[0] for p in kept) == ["model0", "model1"]


def test_uploads_that_sessions_left_behind_are_deleted_when_the_app_starts(server_env, tmp_path):
    uploads = tmp_path / "cache" / "uploads"
    left, recent = uploads / TOKEN_A, uploads / TOKEN_B
    for folder in (left, recent):
        folder.mkdir(parents=True)
        (folder / "weights.pt").write_bytes(b"w")
    two_days_ago = time.time() - 48 * 3600
    os.utime(left, (two_days_ago, two_days_ago))
    no_errors(new_app().run())
    assert not left.exists() and (recent / "weights.pt").is_file()


def test_the_picker_and_system_check_never_show_the_checkpoint_folder(
    server_env, tiny_checkpoint, tmp_path
):
    server_env.setenv("SAMLIB_MODEL", str(tiny_checkpoint))
    server_env.setenv("SAMLIB_ALLOW_CHECKPOINT_UPLOADS", "1")
    hidden = [str(tiny_checkpoint.parent), str(tmp_path), str(Path(samlib.__file__).parent)]
    at = new_app().run()
    no_errors(at)
    at.button(key="load_model").click().run()
    no_errors(at)
    text = shown_text(at)
    assert "tiny.pt" in text and "Loaded **tiny**" in text
    assert not [h for h in hidden if h in text]

    at.switch_page("pages/system_check.py").run()
    no_errors(at)
    text = shown_text(at)
    assert "sam_vit_b_01ec64.pth" in text and "tiny.pt" in text  # names, not folders
    assert not [h for h in hidden if h in text]

    # a broken upload's error names the file, not the session's folder
    at.switch_page("pages/home.py").run()
    upload(custom_checkpoint(at), "broken.pt", b"not a checkpoint")
    at.button(key="load_model").click().run()
    assert any("broken-" in e.value for e in at.error)
    assert not [h for h in hidden if h in shown_text(at)]


def test_tracebacks_never_reach_the_browser(server_env):
    server_env.chdir(ROOT)
    config.get_config_options(force_reparse=True)
    where = config.get_where_defined("client.showErrorDetails")
    assert Path(where) == ROOT / ".streamlit" / "config.toml"
    assert config.get_option("client.showErrorDetails") == "none"

    def fails():
        raise RuntimeError(f"cannot read {ROOT}/secret")

    server_env.setattr("samlib.app.selftest.environment_report", fails)
    at = new_app()
    at.switch_page("pages/system_check.py").run()
    assert at.exception  # an uncaught error, shown without its message or traceback
    assert str(ROOT) not in shown_text(at)
