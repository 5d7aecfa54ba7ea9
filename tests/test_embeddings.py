"""Embeddings equal SamPredictor's; the cache never re-encodes a known image."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from samlib.errors import ImageError
from samlib.models.accel import accelerate, restore
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import (
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


def test_damaged_disk_entry_is_recomputed(tiny_sam, tmp_path):
    rgb = _rgb((40, 40))
    emb = EmbeddingCache(tmp_path).get(tiny_sam, rgb)
    (tmp_path / f"{emb.key}.npz").write_bytes(b"not a zip")
    enc = CountingEncoder()
    again = EmbeddingCache(tmp_path, encoder=enc).get(tiny_sam, rgb)
    assert enc.calls == 1 and torch.equal(again.features, emb.features)


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
