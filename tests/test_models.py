"""Model registry, checkpoint formats, safe loading, cache and device choice."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from segment_anything import SamPredictor

from samlib import models
from samlib.errors import (
    CheckpointError,
    ChecksumError,
    ModelNotDownloadedError,
    UnknownModelError,
    UnsafeCheckpointError,
)
from samlib.everything.params import GeneratorParams
from samlib.models.arch import VIT_B, VIT_TINY, build_sam, detect_config
from samlib.models.embeddings import compute_embedding
from samlib.models.loading import REGISTRY, load_model, suggested_params
from samlib.prompts.prompting import predict

# A tiny config whose decoder head count (8) is what detection assumes for plain state
# dicts, so files without a stored config load back to the same architecture.
TINY8 = dataclasses.replace(VIT_TINY, decoder_num_heads=8)


@pytest.fixture(scope="module")
def tiny8():
    torch.manual_seed(1)
    return build_sam(TINY8)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SAMLIB_MODEL", raising=False)
    return tmp_path / "cache"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _same_outputs(a, b) -> bool:
    rgb = (np.random.default_rng(3).random((40, 60, 3)) * 255).astype(np.uint8)
    pa, pb = SamPredictor(a), SamPredictor(b)
    pa.set_image(rgb)
    pb.set_image(rgb)
    ma, sa, la = pa.predict(np.array([[20.0, 10.0]]), np.array([1]))
    mb, sb, lb = pb.predict(np.array([[20.0, 10.0]]), np.array([1]))
    return np.array_equal(la, lb) and np.array_equal(sa, sb)


# -- registry -------------------------------------------------------------------------
OFFICIAL = {
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        375_042_383,
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        1_249_524_607,
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        2_564_550_879,
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_entries_match_published_values(name):
    entry = models.REGISTRY[name]
    assert (entry.url, entry.size, entry.sha256) == OFFICIAL[name]
    assert entry.file_format == "sam"


@pytest.mark.parametrize("name", ["vit_b_lm", "vit_l_lm"])
def test_micro_sam_entries(name):
    entry = models.REGISTRY[name]
    assert entry.url.startswith("https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/")
    assert entry.url.endswith(name[:5] + ".pt")
    assert entry.sha256 is None and entry.file_format == "micro_sam"


VIT_ENTRIES = sorted(n for n, e in models.REGISTRY.items() if e.config.encoder == "vit")


def test_non_vit_entries_ship_their_config():
    # Only ViT sizes can be read back from weights; other encoders must be samlib files.
    for name, entry in models.REGISTRY.items():
        if entry.config.encoder != "vit":
            assert entry.package_file and entry.url is None, name


@pytest.mark.parametrize("name", VIT_ENTRIES)
def test_registered_architecture_is_detected_from_its_state_dict(name):
    # Built on the meta device: every tensor shape of vit_h without allocating 2.5 GB.
    cfg = models.REGISTRY[name].config
    with torch.device("meta"):
        state = build_sam(cfg).state_dict()
    assert detect_config(state) == cfg


# -- loading from files ---------------------------------------------------------------
def test_samlib_format_round_trip(tmp_path, tiny_sam):
    path = models.save_checkpoint(tiny_sam, tmp_path / "m.pt", VIT_TINY, extra={"note": "x"})
    model = models.load_model(path, "cpu")
    assert model.samlib_info.config == VIT_TINY  # stored config: heads kept
    assert model.samlib_info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.samlib_info.name == "m"
    assert not model.training
    assert _same_weights(model, tiny_sam) and _same_outputs(model, tiny_sam)
    _, _, meta = models.read_checkpoint(path)
    assert meta["note"] == "x" and "samlib_version" in meta


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"sam." + k: v for k, v in sd.items()},
        lambda sd: {"model_state": {"sam." + k: v for k, v in sd.items()}, "epoch": 3},
        lambda sd: {"model_state": sd},
        lambda sd: {
            "model_state": {
                **{"sam." + k: v for k, v in sd.items()},
                "decoder.head.weight": torch.zeros(2, 3),
            }
        },
    ],
    ids=["plain", "sam-prefix", "micro-sam", "model_state", "micro-sam-extra-net"],
)
def test_state_dict_formats_detected(tmp_path, tiny8, wrap):
    path = tmp_path / "w.pth"
    torch.save(wrap(tiny8.state_dict()), path)
    model = models.load_model(str(path), "cpu")
    assert model.samlib_info.config == TINY8
    assert _same_weights(model, tiny8) and _same_outputs(model, tiny8)


@pytest.mark.slow
def test_vit_b_round_trip_through_registry(cache):
    torch.manual_seed(2)
    model = build_sam(VIT_B)
    path = models.checkpoint_path("vit_b")
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)
    fake = dataclasses.replace(models.REGISTRY["vit_b"], sha256=models.file_sha256(path))
    models.REGISTRY["vit_b"], real = fake, models.REGISTRY["vit_b"]
    try:
        loaded = models.load_model("vit_b", "cpu")
    finally:
        models.REGISTRY["vit_b"] = real
    assert loaded.samlib_info.config == VIT_B
    assert _same_weights(loaded, model)


def test_truncated_checkpoint_refused(tmp_path, tiny8):
    path = tmp_path / "t.pth"
    torch.save(tiny8.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        models.load_model(path, "cpu")


def test_empty_file_refused(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        models.load_model(tmp_path / "e.pth")


def test_wrong_keys_refused(tmp_path):
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "lin.pth")
    with pytest.raises(CheckpointError, match="not those of a SAM"):
        models.load_model(tmp_path / "lin.pth")


def test_missing_tensor_refused(tmp_path, tiny8):
    sd = dict(tiny8.state_dict())
    del sd["mask_decoder.iou_token.weight"]
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="iou_token"):
        models.load_model(tmp_path / "m.pth")


def test_wrong_shape_refused(tmp_path, tiny8):
    sd = dict(tiny8.state_dict())
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 7)
    torch.save(sd, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match="shape"):
        models.load_model(tmp_path / "s.pth")


class _Touch:
    """Unpickling this creates a file: stands in for arbitrary code in a checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_pickled_code_refused_and_not_run(tmp_path, tiny8):
    marker = tmp_path / "ran"
    torch.save({"model_state": tiny8.state_dict(), "hook": _Touch(marker)}, tmp_path / "p.pth")
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        models.load_model(tmp_path / "p.pth")
    assert not marker.exists()


def test_allow_pickle_opt_in(tmp_path, tiny8):
    torch.save(
        {"model_state": tiny8.state_dict(), "args": argparse.Namespace(lr=1e-4)},
        tmp_path / "a.pth",
    )
    with pytest.raises(UnsafeCheckpointError):
        models.load_model(tmp_path / "a.pth")
    model = models.load_model(tmp_path / "a.pth", "cpu", allow_pickle=True)
    assert _same_weights(model, tiny8)


def test_unknown_name_lists_known_models(cache):
    with pytest.raises(UnknownModelError, match="vit_b_lm"):
        models.load_model("vit_q")


# -- registry names and the cache -----------------------------------------------------
def test_cache_dir_env_override(cache):
    assert models.cache_dir() == cache
    assert models.checkpoint_path("vit_l").parent == cache / "checkpoints"


def test_not_downloaded_message_says_how(cache):
    with pytest.raises(ModelNotDownloadedError, match="samlib download vit_b"):
        models.load_model("vit_b")
    status = models.model_status("vit_b")
    assert not status.cached and status.expected_size == 375_042_383


def _register_tiny(monkeypatch, cache, tiny8, sha=None):
    entry = models.ModelEntry(
        name="tiny_test",
        config=TINY8,
        url="http://127.0.0.1:1/tiny.pth",
        size=None,
        sha256=sha,
        description="test",
        file_format="sam",
        filename="tiny_test.pth",
    )
    monkeypatch.setitem(models.REGISTRY, entry.name, entry)
    path = models.checkpoint_path(entry.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny8.state_dict(), path)
    return path


def test_load_registered_name_from_cache(cache, monkeypatch, tiny8):
    path = _register_tiny(monkeypatch, cache, tiny8)
    model = models.load_model("tiny_test", "cpu")
    assert model.samlib_info.name == "tiny_test"
    assert model.samlib_info.sha256 == models.file_sha256(path)
    assert _same_weights(model, tiny8)
    assert models.model_status("tiny_test").cached
    assert models.model_status("tiny_test").size == path.stat().st_size
    # Hash recorded on first use; a changed file is caught on the next load.
    torch.save({k: v + 1 for k, v in tiny8.state_dict().items()}, path)
    with pytest.raises(ChecksumError, match="tiny_test"):
        models.load_model("tiny_test", "cpu")


def test_published_hash_mismatch_refused(cache, monkeypatch, tiny8):
    _register_tiny(monkeypatch, cache, tiny8, sha="0" * 64)
    with pytest.raises(ChecksumError, match="0000"):
        models.load_model("tiny_test")


def test_package_file_entry(tmp_path, monkeypatch, tiny_sam):
    monkeypatch.setattr("samlib.models.loading._PACKAGE_DIR", tmp_path)
    models.save_checkpoint(tiny_sam, tmp_path / "weights" / "demo.pt", VIT_TINY)
    entry = models.ModelEntry(
        name="demo_test",
        config=VIT_TINY,
        url=None,
        size=None,
        sha256=None,
        description="bundled",
        file_format="samlib",
        filename="weights/demo.pt",
        package_file=True,
    )
    models.register_model(entry)
    try:
        assert models.download_model("demo_test") == tmp_path / "weights" / "demo.pt"
        model = models.load_model("demo_test", "cpu")
        assert _same_weights(model, tiny_sam)
        with pytest.raises(ValueError, match="already registered"):
            models.register_model(entry)
    finally:
        models.REGISTRY.pop("demo_test", None)


def test_register_needs_url_or_package_file():
    entry = models.ModelEntry("x", VIT_TINY, None, None, None, "", "samlib", "x.pt")
    with pytest.raises(ValueError, match="URL"):
        models.register_model(entry)


def test_default_model_name(cache, monkeypatch, tiny8, tmp_path):
    assert models.default_model_name() in {"vit_b"} | {
        n for n, e in models.REGISTRY.items() if e.package_file
    }
    path = tmp_path / "mine.pth"
    monkeypatch.setenv("SAMLIB_MODEL", str(path))
    assert models.default_model_name() == str(path)
    monkeypatch.delenv("SAMLIB_MODEL")
    (cache / "checkpoints").mkdir(parents=True)
    (cache / "checkpoints" / models.REGISTRY["vit_l"].filename).write_bytes(b"x")
    assert models.default_model_name() == "vit_l"


def test_pick_device_prefers_cuda(monkeypatch):
    assert models.pick_device().type in {"cpu", "cuda", "mps"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.pick_device().type == "cuda"


def test_suggested_params_by_name_and_by_loaded_model(tiny_checkpoint):
    assert suggested_params("vit_b") == {}  # SAM: its own defaults
    assert suggested_params("no such model") == {}
    small = suggested_params("small_cnn")
    assert small and GeneratorParams(**small)  # valid generator parameters
    assert suggested_params(load_model("small_cnn")) == small
    assert suggested_params(load_model(str(tiny_checkpoint))) == {}


def test_a_registered_models_file_loads_as_that_model():
    """The bundled model given by its path (as SAMLIB_MODEL or --model may give it) is the
    bundled model: its name, mask threshold and suggested parameters, as by name."""
    by_path = load_model(str(models.checkpoint_path("small_cnn")), "cpu")
    by_name = load_model("small_cnn", "cpu")
    assert by_path.samlib_info.name == "small_cnn"
    assert by_path.mask_threshold == by_name.mask_threshold == REGISTRY["small_cnn"].mask_threshold
    assert by_path.mask_threshold != 0.0
    assert suggested_params(by_path) == suggested_params("small_cnn")


def test_registry_mask_threshold_reaches_the_loaded_model(tiny_checkpoint, monkeypatch):
    assert REGISTRY["vit_b"].mask_threshold == 0.0  # SAM's own
    # the bundled weights under an entry that cuts its masks at logit 1.5
    entry = dataclasses.replace(REGISTRY["small_cnn"], name="small_cut", mask_threshold=1.5)
    monkeypatch.setitem(REGISTRY, "small_cut", entry)
    small = load_model("small_cut")
    assert small.mask_threshold == 1.5
    assert load_model(str(tiny_checkpoint)).mask_threshold == 0.0  # a file: SAM's default
    # a checkpoint written from the demo model (e.g. fine-tuned) keeps its mask cut
    saved = models.save_checkpoint(
        small, tiny_checkpoint.with_name("tuned.pt"), small.samlib_info.config
    )
    assert load_model(str(saved)).mask_threshold == small.mask_threshold
    # the prompt path cuts the logits at the model's threshold
    # a soft-edged bright disk: a nucleus whose outline logits cross both cuts
    yy, xx = np.mgrid[:128, :128]
    disk = ndi.gaussian_filter(((yy - 30) ** 2 + (xx - 30) ** 2 <= 100).astype(float), 3.0)
    rgb = np.repeat((disk * 200 + 20).astype(np.uint8)[..., None], 3, axis=2)
    emb = compute_embedding(small, rgb)
    res = predict(small, emb, points=[[30.0, 30.0]], labels=[1], exact=True, multimask=False)
    small.mask_threshold = 0.0
    at_zero = predict(small, emb, points=[[30.0, 30.0]], labels=[1], exact=True, multimask=False)
    assert res.masks.sum() < at_zero.masks.sum()  # a higher cut: a smaller mask
