"""Crafted and broken checkpoint files: each is refused with one line, before any allocation."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from samlib import models
from samlib.errors import CheckpointError, UnsafeCheckpointError
from samlib.models.arch import VIT_TINY, build_sam

REPO = Path(__file__).resolve().parents[1]


def _samlib_file(path: Path, config: dict, state: dict, meta: dict | None = None) -> Path:
    """Write a samlib-format checkpoint by hand, as a crafted file would be."""
    torch.save({"config": config, "state_dict": state, "meta": meta or {}}, path)
    return path


def _refused(path: Path, match: str) -> str:
    """Load ``path``, expect a CheckpointError matching ``match``, return its message."""
    with pytest.raises(CheckpointError, match=match) as info:
        models.load_model(path, "cpu")
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


# -- crafted configs ------------------------------------------------------------------
def test_tiny_file_with_huge_width_refused_before_building(tmp_path):
    # 100k-wide blocks would need over 100 GB; the file holds no weights at all.
    cfg = {**VIT_TINY.to_dict(), "embed_dim": 100_000, "depth": 64}
    path = _samlib_file(tmp_path / "huge.pt", cfg, {})
    assert path.stat().st_size < 4096
    # The config check names the field; building first would fail on memory or on the
    # missing weights instead.
    message = _refused(path, "embed_dim")
    assert "100000" in message


def test_sizes_within_field_bounds_but_too_many_numbers_refused(tmp_path):
    # Every field is within its bound, but a 2048 x 2048 token grid of 2048-wide
    # embeddings alone is 8.6G numbers.
    cfg = {
        **VIT_TINY.to_dict(),
        "img_size": 2048,
        "patch_size": 1,
        "embed_dim": 2048,
        "num_heads": 16,
        "global_attn_indexes": [1],
    }
    _refused(_samlib_file(tmp_path / "big.pt", cfg, {}), r"numbers \([\d.,]+ GB\)")


def test_patch_size_zero_refused(tmp_path, tiny_sam):
    cfg = {**VIT_TINY.to_dict(), "patch_size": 0}
    _refused(_samlib_file(tmp_path / "p0.pt", cfg, tiny_sam.state_dict()), "patch_size")


def test_config_checks_hold_under_python_O(tmp_path, tiny_sam):
    # SAM's decoder checks its head count with an assert, which `python -O` drops: the
    # model then loads and fails (or answers wrongly) only when used.
    cfg = {**VIT_TINY.to_dict(), "decoder_num_heads": 3}
    path = _samlib_file(tmp_path / "heads.pt", cfg, tiny_sam.state_dict())
    script = textwrap.dedent(
        f"""
        import sys
        from samlib import models
        from samlib.errors import CheckpointError
        assert sys.flags.optimize == 1  # dropped: proves asserts are off
        try:
            models.load_model({str(path)!r}, "cpu")
        except CheckpointError as exc:
            print("refused:", exc)
        else:
            print("loaded")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-O", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:"), proc.stdout
    assert "decoder_num_heads 3" in proc.stdout


# -- weights that do not fit ----------------------------------------------------------
def test_mismatched_shape_is_one_line_naming_the_tensor(tmp_path, tiny_sam):
    state = dict(tiny_sam.state_dict())
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    path = _samlib_file(tmp_path / "s.pt", VIT_TINY.to_dict(), state)
    message = _refused(path, "shapes do not match")
    assert "mask_decoder.iou_token.weight is (1, 7), the model needs (1, 32)" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weight_refused_by_name(tmp_path, tiny_sam, value):
    state = dict(tiny_sam.state_dict())
    weight = state["mask_decoder.iou_prediction_head.layers.0.weight"].clone()
    weight[3, 5] = value
    state["mask_decoder.iou_prediction_head.layers.0.weight"] = weight
    path = _samlib_file(tmp_path / "n.pt", VIT_TINY.to_dict(), state)
    _refused(path, r"mask_decoder\.iou_prediction_head\.layers\.0\.weight holds NaN or infinite")


def test_non_finite_mask_threshold_refused(tmp_path, tiny_sam):
    path = tmp_path / "t.pt"
    _samlib_file(path, VIT_TINY.to_dict(), tiny_sam.state_dict(), {"mask_threshold": float("nan")})
    _refused(path, "mask_threshold must be a finite number")
    model = build_sam(VIT_TINY)
    model.mask_threshold = float("nan")
    with pytest.raises(CheckpointError, match="mask_threshold"):
        models.save_checkpoint(model, tmp_path / "u.pt", VIT_TINY)
    assert not (tmp_path / "u.pt").exists()


# -- files that are not checkpoints ---------------------------------------------------
PASSWD = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"


@pytest.mark.parametrize(
    "content",
    [PASSWD, b"x,y\n1,2\n", b'{"model": "vit_b"}\n', bytes(range(256)) * 4],
    ids=["passwd", "csv", "json", "binary"],
)
def test_foreign_file_refused_as_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as info:
        models.load_model(path, "cpu")
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert len(str(info.value).splitlines()) == 1


def test_zip_that_is_not_a_checkpoint_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "not weights")
    (tmp_path / "z.pt").write_bytes(buf.getvalue())
    _refused(tmp_path / "z.pt", "not a readable checkpoint .* or not a PyTorch file")


def test_weight_names_that_are_not_text_refused(tmp_path):
    torch.save({1: torch.zeros(2)}, tmp_path / "k.pt")
    _refused(tmp_path / "k.pt", "names that are not text")


# -- atomic save ----------------------------------------------------------------------
def test_failed_save_leaves_the_old_file_and_no_partial_one(tmp_path, tiny_sam):
    path = models.save_checkpoint(tiny_sam, tmp_path / "m.pt", VIT_TINY)
    before = path.read_bytes()
    with pytest.raises(Exception, match="lambda"):  # pickling fails part-way through
        models.save_checkpoint(tiny_sam, path, VIT_TINY, extra={"bad": lambda: 0})
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
    assert path.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX file-size limits")
def test_save_on_a_full_disk_leaves_the_old_file_and_no_partial_one(tmp_path, tiny_sam):
    # A file-size limit makes writes past 64 KB fail as a full disk would (EFBIG).
    path = models.save_checkpoint(tiny_sam, tmp_path / "m.pt", VIT_TINY)
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import resource, signal
        import torch
        from samlib.models.arch import VIT_TINY, build_sam
        from samlib.models.checkpoints import save_checkpoint
        model = build_sam(VIT_TINY)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        try:
            save_checkpoint(model, {str(path)!r}, VIT_TINY)
        except Exception as exc:
            print("failed:", type(exc).__name__, exc)
        else:
            print("saved")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.stdout.startswith("failed: CheckpointError could not write"), proc.stdout
    assert len(proc.stdout.splitlines()) == 1, proc.stdout
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
    assert path.read_bytes() == before
    assert models.load_model(path, "cpu").samlib_info.config == VIT_TINY
