"""Embeddings equal SamPredictor's; the cache never re-encodes a known image, and a damaged
or unwritable disk cache never stops the work."""

from __future__ import annotations

import copy
import errno
import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samlib.errors import CacheWarning, ImageError
from samlib.models.accel import accelerate, restore
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import (
    STALE_TEMP_S,
    EmbeddingCache,
    compute_embedding,
    default_cache_dir,
    embedding_key,
)


def _rgb(shape, seed=0):
    return (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(96, 128), (128, 96), (256, 256), (17, 300), (300, 17)])
def test_embedding_equals_predictor_features(tiny_sam, shape):
    rgb = _rgb(shape)
    pred = SamPredictor(tiny_sam)
    pred.set_image(rgb)
    emb = compute_embedding(tiny_sam, rgb)
    assert torch.equal(emb.features, pred.features)
    assert emb.original_size == shape == pred.original_size
    assert emb.input_size == pred.input_size
    assert max(emb.input_size) == VIT_TINY.img_size
    assert emb.features.shape == (1, VIT_TINY.prompt_embed_dim, 16, 16)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.uint16),
        np.zeros((0, 10, 3), np.uint8),
        [[1, 2, 3]],
    ],
    ids=["gray", "rgba", "uint16", "empty", "list"],
)
def test_bad_images_refused(tiny_sam, bad):
    with pytest.raises(ImageError):
        compute_embedding(tiny_sam, bad)


class CountingEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, model, rgb8, key=""):
        self.calls += 1
        return compute_embedding(model, rgb8, key=key)


def test_memory_cache_hit_does_not_encode(tiny_sam):
    enc = CountingEncoder()
    cache = EmbeddingCache(encoder=enc)
    rgb = _rgb((64, 80))
    a = cache.get(tiny_sam, rgb, {"percentiles": [1, 99.8]})
    b = cache.get(tiny_sam, rgb.copy(), {"percentiles": [1, 99.8]})
    assert enc.calls == 1 and b is a
    cache.get(tiny_sam, rgb, {"percentiles": [2, 98]})  # other normalisation: new entry
    assert enc.calls == 2
    cache.get(tiny_sam, _rgb((64, 80), seed=1))  # other image
    assert enc.calls == 3 == cache.encodes


def test_disk_cache_survives_restart(tiny_sam, tmp_path):
    rgb = _rgb((50, 70))
    first = EmbeddingCache(tmp_path)
    emb = first.get(tiny_sam, rgb, {"channel": 0})
    assert len(list(tmp_path.glob("*.npz"))) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    enc = CountingEncoder()
    second = EmbeddingCache(tmp_path, encoder=enc)
    again = second.get(tiny_sam, rgb, {"channel": 0})
    assert enc.calls == 0
    assert torch.equal(again.features, emb.features)
    assert again.original_size == (50, 70) and again.input_size == emb.input_size
    assert again.key == emb.key == embedding_key(tiny_sam, rgb, {"channel": 0})


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMLIB_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"


def test_disk_cache_is_pruned_oldest_first(tiny_sam, tmp_path):
    one = EmbeddingCache(tmp_path).get(tiny_sam, _rgb((30, 30), seed=0))
    size = (tmp_path / f"{one.key}.npz").stat().st_size
    cache = EmbeddingCache(tmp_path, max_disk_bytes=int(2.5 * size))
    keys = [cache.get(tiny_sam, _rgb((30, 30), seed=s)).key for s in (1, 2)]
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == sorted(keys)
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(keys)


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the stored (uncompressed) features
    path.write_bytes(bytes(data))


def _features(npz):
    with np.load(npz) as data:
        return data["features"]


def _edit_meta(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


# What a power cut, a full disk or a stray program leaves: (npz, json) -> None.
DAMAGE = {
    "truncated": lambda npz, meta: npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2]),
    "empty": lambda npz, meta: npz.write_bytes(b""),
    "bad_crc": lambda npz, meta: _flip_middle_byte(npz),
    "not_a_zip": lambda npz, meta: npz.write_bytes(b"not a zip"),
    "wrong_shape": lambda npz, meta: np.savez(npz, features=np.zeros((1, 8, 4, 4), np.float32)),
    "wrong_dtype": lambda npz, meta: np.savez(npz, features=_features(npz).astype(np.float64)),
    "wrong_array_name": lambda npz, meta: np.savez(npz, other=_features(npz)),
    "meta_not_json": lambda npz, meta: meta.write_text('{"format": 1, "original'),
    "meta_not_an_object": lambda npz, meta: meta.write_text("[]"),
    "meta_missing": lambda npz, meta: meta.unlink(),
    "meta_without_size": lambda npz, meta: _edit_meta(meta, original_size=None),
    "meta_wrong_input_size": lambda npz, meta: _edit_meta(meta, input_size=[16, 16]),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_unreadable_disk_entry_is_deleted_and_recomputed(tiny_sam, tmp_path, damage):
    rgb = _rgb((40, 60))
    emb = EmbeddingCache(tmp_path).get(tiny_sam, rgb)
    damage(tmp_path / f"{emb.key}.npz", tmp_path / f"{emb.key}.json")
    enc = CountingEncoder()
    with pytest.warns(CacheWarning, match="unreadable"):
        again = EmbeddingCache(tmp_path, encoder=enc).get(tiny_sam, rgb)
    assert enc.calls == 1 and torch.equal(again.features, emb.features)
    assert (again.original_size, again.input_size) == ((40, 60), emb.input_size)
    # healed on disk: the next cache reads it back without encoding (or any warning)
    enc = CountingEncoder()
    healed = EmbeddingCache(tmp_path, encoder=enc).get(tiny_sam, rgb)
    assert enc.calls == 0 and torch.equal(healed.features, emb.features)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{emb.key}.json", f"{emb.key}.npz"]


def _parent_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "embeddings"


def _read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.write_text("")
    except PermissionError:
        return folder
    probe.unlink()
    pytest.skip("this user (root) writes to read-only folders: 'disk_full' covers it")


def _disk_full(tmp_path, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    return tmp_path / "cache"


UNWRITABLE = {
    "parent_is_a_file": _parent_is_a_file,
    "read_only": _read_only_folder,
    "disk_full": _disk_full,
}


@pytest.mark.parametrize("make", UNWRITABLE.values(), ids=UNWRITABLE.keys())
def test_unwritable_cache_warns_and_keeps_the_embedding_in_memory(
    tiny_sam, tmp_path, monkeypatch, make
):
    rgb = _rgb((40, 60))
    expected = compute_embedding(tiny_sam, rgb).features
    folder = make(tmp_path, monkeypatch)
    try:
        enc = CountingEncoder()
        cache = EmbeddingCache(folder, encoder=enc)
        with pytest.warns(CacheWarning, match="cannot be written"):
            emb = cache.get(tiny_sam, rgb)
        assert torch.equal(emb.features, expected)
        assert cache.get(tiny_sam, rgb) is emb and enc.calls == 1
        assert not folder.is_dir() or not any(folder.iterdir())  # no half entry, no temp file
    finally:
        if folder.is_dir():
            folder.chmod(0o755)


def _aged(path, seconds):
    path.write_bytes(b"partial")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_stale_temp_files_are_pruned_on_open_and_after_a_write(tiny_sam, tmp_path):
    old = STALE_TEMP_S + 60
    stale = [_aged(tmp_path / ".abc.npz.k2j3.tmp", old), _aged(tmp_path / "x.part", old)]
    other = _aged(tmp_path / "notes.txt", old)
    cache = EmbeddingCache(tmp_path)
    assert not any(p.exists() for p in stale) and other.exists()
    later = _aged(tmp_path / ".def.json.a1b2.tmp", old)  # a writer that died since
    cache.get(tiny_sam, _rgb((30, 30)))
    assert not later.exists() and other.exists()


def test_fresh_temp_file_of_another_writer_is_kept(tiny_sam, tmp_path):
    rgb = _rgb((30, 30))
    key = embedding_key(tiny_sam, rgb)
    writing = _aged(tmp_path / f".{key}.npz.w9x8.tmp", 5)  # another process, mid-write
    stale = _aged(tmp_path / f".{key}.npz.d3a4.tmp", STALE_TEMP_S + 60)
    EmbeddingCache(tmp_path).get(tiny_sam, rgb)
    assert writing.exists() and writing.read_bytes() == b"partial"
    assert not stale.exists()


def test_other_model_other_key(tiny_sam):
    torch.manual_seed(5)
    other = build_sam(VIT_TINY)
    rgb = _rgb((32, 32))
    assert embedding_key(tiny_sam, rgb) != embedding_key(other, rgb)
    enc = CountingEncoder()
    cache = EmbeddingCache(encoder=enc)
    cache.get(tiny_sam, rgb)
    cache.get(other, rgb)
    assert enc.calls == 2


def test_key_follows_in_place_weight_changes(tiny_sam):
    model = copy.deepcopy(tiny_sam)
    rgb = _rgb((32, 32))
    before = embedding_key(model, rgb)
    assert embedding_key(model, rgb) == before
    with torch.no_grad():
        next(model.image_encoder.parameters()).add_(1.0)
    assert embedding_key(model, rgb) != before


def test_lru_evicts_oldest(tiny_sam):
    enc = CountingEncoder()
    cache = EmbeddingCache(max_items=2, encoder=enc)
    imgs = [_rgb((30, 30), seed=s) for s in range(3)]
    for img in imgs:
        cache.get(tiny_sam, img)
    assert len(cache) == 2 and enc.calls == 3
    cache.get(tiny_sam, imgs[2])
    assert enc.calls == 3
    cache.get(tiny_sam, imgs[0])  # evicted, memory only: encoded again
    assert enc.calls == 4


def test_concurrent_requests_encode_once(tiny_sam):
    enc = CountingEncoder()
    cache = EmbeddingCache(encoder=enc)
    rgb = _rgb((60, 60))
    results = []
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        results.append(cache.get(tiny_sam, rgb))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert enc.calls == 1
    assert all(r is results[0] for r in results)


def test_fast_encoder_embeddings_are_kept_apart(tiny_sam):
    # the fast encoder's features differ from stock by rounding: a result is reproduced bit
    # for bit only from the same encoder, so the cache must not hand one for the other

    model = copy.deepcopy(tiny_sam)
    rgb = _rgb((32, 32))
    stock = embedding_key(model, rgb)
    accelerate(model)
    try:
        assert embedding_key(model, rgb) != stock
    finally:
        restore(model)
    assert embedding_key(model, rgb) == stock
