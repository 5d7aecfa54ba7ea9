"""Fused attention in the image encoder gives the stock embedding (same weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling.image_encoder import Block

from samlib.models import accel
from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.embeddings import compute_embedding
from samlib.workspace import workspace


@pytest.fixture
def rough_sam():
    """A tiny SAM with non-zero relative-position tables (stock initialises them to 0)."""
    torch.manual_seed(1)
    sam = build_sam(VIT_TINY)
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                p.normal_(0, 0.5)
    return sam


def test_accelerated_encoder_matches_stock(rough_sam):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (100, 140, 3), dtype=np.uint8)
    pred = SamPredictor(rough_sam)
    pred.set_image(img)
    ref = pred.features.clone()
    info = accel.accelerate(rough_sam)
    assert info["sdpa"] and not info["bf16"]  # CPU: never bfloat16
    assert accel.accelerated(rough_sam) == info
    with torch.no_grad():
        ours = compute_embedding(rough_sam, img).features
    assert accel.cosine(ours, ref) >= 0.99999
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    accel.restore(rough_sam)
    assert accel.accelerated(rough_sam) is None
    with torch.no_grad():
        assert torch.equal(compute_embedding(rough_sam, img).features, ref)


@pytest.mark.parametrize(("window", "side"), [(4, 6), (0, 8), (0, 40)])
def test_sdpa_block_equals_stock(window, side):
    # side 40 = 1600 tokens: queries are attended in two chunks (1024 + 576)
    torch.manual_seed(0)
    size = (side, side) if window == 0 else (window, window)
    blk = Block(32, 2, use_rel_pos=True, window_size=window, input_size=size)
    with torch.no_grad():
        blk.attn.rel_pos_h.normal_(0, 0.3)
        blk.attn.rel_pos_w.normal_(0, 0.3)
        x = torch.randn(2, side, side, 32)
        ref = blk(x)
        blk.attn.forward = accel.sdpa_forward.__get__(blk.attn)
        ours = blk(x)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_bf16_refused_when_unfaithful(rough_sam):
    # forcing bf16 reports its cosine; "auto" on a CPU model never enables it
    info = accel.accelerate(rough_sam, bf16=True)
    assert info["bf16"] and 0.9 < info["cosine"] <= 1.0
    assert accel.accelerate(rough_sam, bf16="auto")["bf16"] is False
    accel.restore(rough_sam)


@pytest.mark.parametrize(("window", "side"), [(4, 6), (0, 8)])
def test_block_forward_in_workspace_equals_stock(window, side):
    # in-place residuals and reused MLP buffers: the same block output, call after call
    torch.manual_seed(0)
    size = (side, side) if window == 0 else (window, window)
    blk = Block(32, 2, use_rel_pos=True, window_size=window, input_size=size)
    with torch.no_grad():
        blk.attn.rel_pos_h.normal_(0, 0.3)
        x1, x2 = torch.randn(2, 2, side, side, 32)
        ref1, ref2 = blk(x1), blk(x2)
        blk.attn.forward = accel.sdpa_forward.__get__(blk.attn)
        blk.forward = accel.block_forward.__get__(blk)
        with workspace():
            ours1 = blk(x1).clone()
            ours2 = blk(x2)
    torch.testing.assert_close(ours1, ref1, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ours2, ref2, atol=2e-5, rtol=1e-5)
    x = torch.randn(1, side, side, 32, requires_grad=True)
    blk(x).sum().backward()  # with autograd: the stock code, no in-place sums
    assert x.grad is not None and x.grad.abs().sum() > 0
