"""to_rgb8: channel choice, per-channel percentile normalisation, gamma, NaN, errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from samlib.errors import ImageTooLargeError, ParameterError
from samlib.image.display import (
    MAX_CONVERSION_BYTES,
    channel_limits,
    conversion_bytes,
    default_channels,
    to_rgb8,
)
from samlib.image.microscopy import as_image


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_ramp_maps_to_full_range(dtype):
    ramp = np.tile(np.arange(0, 200, 2), (5, 1)).astype(dtype)  # 5 x 100, values 0..198
    rgb = to_rgb8(ramp, percentiles=(0, 100))
    assert rgb.shape == (5, 100, 3) and rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # grey replicated
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    np.testing.assert_array_equal(rgb[0, :, 0], np.rint(np.arange(100) / 99 * 255))


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64])
def test_wide_integers_far_from_zero_keep_every_step(dtype):
    ramp = np.tile(np.arange(0, 200, 2), (5, 1))
    offset = 2**30 + 2**29  # float32 steps are 128 apart here
    rgb = to_rgb8((ramp + offset).astype(dtype), percentiles=(0, 100))
    np.testing.assert_array_equal(rgb, to_rgb8(ramp.astype(np.uint8), percentiles=(0, 100)))


def test_percentiles_clip_outliers_per_channel():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, size=(64, 64))
    a[0, 0] = 1e6  # one hot pixel must not squash the rest
    b = rng.normal(5000, 100, size=(64, 64))
    img = as_image(np.stack([a, b], axis=-1).astype(np.float32), "YXC")
    rgb = to_rgb8(img)
    assert rgb[0, 0, 0] == 255
    assert 80 < rgb[1:, :, 0].mean() < 175  # not all black as min-max would give
    assert 80 < rgb[..., 1].mean() < 175  # channel 1 normalised on its own range
    assert rgb[..., 2].max() == 0  # two channels: blue stays black
    lo, hi = channel_limits(a, (1, 99.8))
    assert lo == pytest.approx(np.percentile(a, 1)) and hi == pytest.approx(np.percentile(a, 99.8))


def test_nan_and_inf_are_safe():
    a = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    a[0, 0] = np.nan
    a[0, 1] = np.inf
    rgb = to_rgb8(a, percentiles=(0, 100))
    assert rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 255
    assert rgb[9, 9, 0] == 255 and rgb[0, 2, 0] < 10
    assert to_rgb8(np.full((4, 4), np.nan, np.float32)).max() == 0


def _pattern(dtype) -> np.ndarray:
    """A 32 x 32 image with values in [-1.99, 1.99): every pixel a different grey level."""
    return np.random.default_rng(1).uniform(-1.99, 1.99, (32, 32)).astype(dtype)


# Powers of two scale exactly, so the scaled image must give the very same pixels; the
# largest reach the top of each dtype, where differences of two values overflow.
@pytest.mark.parametrize(
    ("dtype", "factor"),
    [
        (np.float64, 2.0**1000),  # about 1e301
        (np.float64, 2.0**1023),  # values up to 3.6e308 apart
        (np.float64, 2.0**-1000),  # about 1e-301
        (np.float32, 2.0**127),  # values up to 6.8e38 apart
        (np.float32, 2.0**-100),
    ],
)
@pytest.mark.parametrize("percentiles", [(0, 100), (1, 99.8)])
def test_huge_and_tiny_values_give_the_pattern_itself(dtype, factor, percentiles):
    pattern = _pattern(dtype)
    scaled = pattern * dtype(factor)
    assert np.all(np.isfinite(scaled)) and np.all(scaled[pattern != 0] != 0)
    expected = to_rgb8(pattern, percentiles=percentiles)
    assert expected.min() == 0 and expected.max() == 255
    np.testing.assert_array_equal(to_rgb8(scaled, percentiles=percentiles), expected)
    lo, hi = channel_limits(scaled, percentiles)
    assert np.isfinite(lo) and np.isfinite(hi) and lo < hi


def test_values_near_1e300_keep_their_contrast():
    pattern = _pattern(np.float64)
    diff = to_rgb8(pattern * 1e300).astype(int) - to_rgb8(pattern)
    assert np.abs(diff).max() <= 1  # 1e300 is not a power of two: rounding may differ by 1


def test_nan_and_inf_leave_the_finite_pixels_contrast_alone():
    pattern = _pattern(np.float64)
    holes = pattern.copy()
    holes[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    finite = np.isfinite(holes)
    expected = to_rgb8(np.where(finite, pattern, np.nan))  # the same finite pixels
    assert expected[finite].std() > 50  # full contrast
    for image in (holes, holes * 2.0**1000):
        rgb = to_rgb8(image)
        np.testing.assert_array_equal(rgb[finite], expected[finite])
        assert rgb[0, :4, 0].tolist() == [0, 255, 0, 0]  # NaN black, +inf white, -inf black


def test_channel_mapping_and_gamma():
    stack = np.zeros((8, 8, 3), np.uint16)
    stack[..., 0] = np.arange(8)[None, :] * 100
    stack[..., 2] = np.arange(8)[:, None] * 100
    img = as_image(stack, "YXC")
    rgb = to_rgb8(img, channels=(2, None, 0), percentiles=(0, 100))
    np.testing.assert_array_equal(
        rgb[..., 0], to_rgb8(img, channels=2, percentiles=(0, 100))[..., 0]
    )
    assert rgb[..., 1].max() == 0
    assert rgb[7, 0, 0] == 255 and rgb[0, 7, 2] == 255 and rgb[0, 7, 0] == 0
    bright = to_rgb8(img, channels=0, gamma=0.5, percentiles=(0, 100))
    linear = to_rgb8(img, channels=0, percentiles=(0, 100))
    assert bright[0, 3, 0] > linear[0, 3, 0]
    assert bright[0, 3, 0] == round(255 * (3 / 7) ** 0.5)


def test_default_channels():
    assert default_channels(1) == (0, 0, 0)
    assert default_channels(2) == (0, 1, None)
    assert default_channels(5) == (0, 1, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"percentiles": (50, 10)},
        {"percentiles": (-1, 99)},
        {"percentiles": (1, 101)},
        {"percentiles": "1-99"},
        {"gamma": 0},
        {"gamma": 1000},
        {"gamma": float("nan")},
        {"channels": (0, 1)},
        {"channels": (0, 0, 3)},
        {"channels": "rgb"},
        {"plane": 1},
    ],
)
def test_absurd_parameters_refused(kwargs):
    with pytest.raises(ParameterError):
        to_rgb8(np.zeros((16, 16, 3), np.uint8), **kwargs)


def test_flat_channel_is_black():
    assert to_rgb8(np.full((4, 4), 7, np.uint16)).max() == 0


def _peak_bytes(fn, *args, **kwargs) -> int:
    """Peak of Python/NumPy allocations while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("planes, channels, plane", [(1, 1, 0), (1, 3, 0), (3, 2, "max")])
def test_the_conversion_estimate_bounds_what_to_rgb8_allocates(dtype, planes, channels, plane):
    rng = np.random.default_rng(1)
    data = (rng.random((planes, 300, 200, channels)) * 200).astype(dtype)
    if np.dtype(dtype).kind == "f":
        data.flat[::11] = np.nan
    img = as_image(data, "ZYXC")
    to_rgb8(img, plane=plane)  # NumPy's first-call allocations are not the conversion's
    estimate = conversion_bytes(img, plane=plane)
    peak = _peak_bytes(to_rgb8, img, plane=plane)
    assert 0.6 * estimate < peak <= estimate


def test_an_image_too_large_to_convert_is_refused_before_anything_is_allocated():
    # 100 million pixels of one byte: a few kilobytes as a compressed file, 2.4 GB to convert
    huge = as_image(np.broadcast_to(np.uint8(7), (10_000, 10_000)), name="bomb.tif")
    assert conversion_bytes(huge) > MAX_CONVERSION_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match=r"bomb.tif: .* 2.2 GiB .* of 2.0 GiB") as info:
            to_rgb8(huge)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value) and peak < 2**20


def test_the_conversion_limit_is_a_parameter():
    img = as_image(np.arange(64 * 48, dtype=np.uint16).reshape(64, 48), name="small")
    need = conversion_bytes(img)
    assert to_rgb8(img, max_bytes=need).shape == (64, 48, 3)
    with pytest.raises(ImageTooLargeError, match="small: converting its 48 x 64 px uint16"):
        to_rgb8(img, max_bytes=need - 1)
    stack = as_image(np.zeros((5, 64, 48), np.uint16), "ZYX")
    assert conversion_bytes(stack, plane="max") == need + 64 * 48 * 2  # the projection
