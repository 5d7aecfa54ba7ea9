"""Bundled samples load offline, with the documented shapes, dtypes and reference labels."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile

from samlib.datasets.samples import (
    DATA_DIR,
    list_samples,
    load_sample,
    sample_info,
    synthetic_stack,
)
from samlib.errors import ParameterError
from samlib.image.display import to_rgb8

SHARED = Path("/work/shared/data/dsb2018_nuclei")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a sample tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", list_samples())
def test_every_sample_loads_offline_and_converts(name, offline):
    image, labels, description = load_sample(name)
    assert description and image.name
    rgb = to_rgb8(image)
    assert rgb.shape == (image.height, image.width, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 5  # not a blank image
    if sample_info(name).has_ground_truth:
        assert labels.shape == image.size_yx and labels.dtype == np.uint16
        assert labels.max() > 0
    else:
        assert labels is None


def test_dsb_sample_is_the_original_data():
    image, labels, _ = load_sample("dsb2018")
    assert image.shape == (1, 512, 512, 1) and image.dtype == np.uint16
    assert image.data.max() == 235
    assert len(np.unique(labels)) - 1 == 125
    assert (DATA_DIR / "dsb2018_nuclei" / "SOURCE.md").read_text().count("Caicedo") == 1
    if SHARED.exists():  # the copy is lossless
        np.testing.assert_array_equal(image.data[0, ..., 0], tifffile.imread(SHARED / "image.tif"))
        np.testing.assert_array_equal(labels, tifffile.imread(SHARED / "mask.tif"))


def test_skimage_samples_have_expected_layout():
    cell, _, _ = load_sample("Cell (scikit-image)")
    assert cell.shape == (1, 660, 550, 1) and cell.pixel_size_um == pytest.approx(0.107)
    ihc, _, _ = load_sample("immunohistochemistry (scikit-image)")
    assert ihc.shape == (1, 512, 512, 3)


def test_synthetic_stack_is_reproducible_and_consistent():
    a, la = synthetic_stack(seed=3)
    b, lb = synthetic_stack(seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.shape == (3, 256, 256, 2) and a.dtype == np.uint16
    n = la.max()
    assert n >= 10 and set(np.unique(la)) == set(range(n + 1))
    nuclei = la > 0
    focus = a[1, ..., 0].astype(float)
    # nuclei are brighter than background in the nuclear channel
    assert focus[nuclei].mean() > 3 * focus[~nuclei].mean()
    # membranes are outside the nuclei in the membrane channel
    membrane = a[1, ..., 1].astype(float)
    assert membrane[~nuclei].max() > 2 * membrane[nuclei].mean()
    # plane 1 is the sharpest: largest high-frequency energy
    sharp = [np.abs(np.diff(a[z, ..., 0].astype(float), axis=1)).mean() for z in range(3)]
    assert int(np.argmax(sharp)) == 1
    c, _ = synthetic_stack(seed=4)
    assert not np.array_equal(a, c)


def test_unknown_sample_refused():
    with pytest.raises(ParameterError, match="available"):
        load_sample("nope")
