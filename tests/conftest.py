"""Shared fixtures: tiny random-weight SAM models and synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from samlib.models.arch import VIT_TINY, build_sam
from samlib.models.loading import save_checkpoint

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_sam():
    """A tiny ViT-SAM with seeded random weights (eval mode, CPU)."""
    torch.manual_seed(0)
    return build_sam(VIT_TINY)


@pytest.fixture(scope="module")
def sharp_sam():
    """A tiny random SAM whose mask logits are scaled up so that many masks are stable."""
    torch.manual_seed(2)
    sam = build_sam(VIT_TINY)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 100
            mlp.layers[-1].bias *= 100
    return sam


def make_disks(shape=(96, 128), disks=((30, 40, 12), (60, 90, 18)), dtype=np.uint8, value=None):
    """Draw filled disks (row, col, radius) on a dark background; return (image, labels)."""
    img = np.zeros(shape, dtype=np.float64)
    labels = np.zeros(shape, dtype=np.uint16)
    for i, (r, c, rad) in enumerate(disks, start=1):
        rr, cc = disk((r, c), rad, shape=shape)
        img[rr, cc] = 1.0
        labels[rr, cc] = i
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max if value is None else value
    else:
        top = 1.0 if value is None else value
    return (img * top).astype(dtype), labels


@pytest.fixture
def disks_image():
    """A uint8 grayscale image with two bright disks and its label image."""
    return make_disks()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_sam, tmp_path_factory):
    """Path of ``tiny_sam`` saved in the samlib checkpoint format (loads with weights_only)."""

    return save_checkpoint(tiny_sam, tmp_path_factory.mktemp("ckpt") / "tiny.pt", VIT_TINY)
