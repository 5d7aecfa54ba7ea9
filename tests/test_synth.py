"""Synthetic microscopy images: reproducible from a seed, labels consistent with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import find_boundaries

from samlib.datasets.synth import (
    KINDS,
    NucleiDataset,
    SynthDataset,
    nuclei_image,
    object_field,
    synth_image,
)
from samlib.errors import ParameterError


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_image(kind):
    a_img, a_lab = synth_image(7, (64, 80), kind=kind)
    b_img, b_lab = synth_image(7, (64, 80), kind=kind)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = synth_image(8, (64, 80), kind=kind)
    assert not np.array_equal(a_img, c_img)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", KINDS)
def test_labels_are_connected_and_consecutive(kind, seed):
    img, lab = synth_image(seed, (96, 96), kind=kind)
    assert lab.shape == img.shape[:2] == (96, 96)
    assert lab.dtype == np.int32
    ids = np.unique(lab)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # 0..N, no gaps
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        assert ndi.label(lab[sl] == i)[1] == 1, f"label {i} is split"


@pytest.mark.parametrize(
    ("kind", "dtypes", "ndims"),
    [
        ("fluorescence", {np.uint16}, {2}),
        ("brightfield", {np.uint8}, {2, 3}),
        ("multichannel", {np.uint16}, {3}),
    ],
)
def test_kinds_have_their_dtype_and_layout(kind, dtypes, ndims):
    for seed in range(4):
        img, _ = synth_image(seed, (48, 48), kind=kind)
        assert img.dtype.type in dtypes
        assert img.ndim in ndims
        if img.ndim == 3:
            assert img.shape[2] in (2, 3)


def _contrast(img: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Per channel: mean inside objects minus mean outside, in units of the image's std."""
    x = img.astype(np.float64).reshape(*lab.shape, -1)
    inside, outside = x[lab > 0].mean(0), x[lab == 0].mean(0)
    return (inside - outside) / (x.std((0, 1)) + 1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fluorescence_objects_are_brighter(seed):
    img, lab = synth_image(seed, (128, 128), kind="fluorescence", n_objects=20, radius=(6, 9))
    assert lab.max() > 5
    assert _contrast(img, lab)[0] > 0.5


@pytest.mark.parametrize("seed", range(5))
def test_brightfield_objects_are_darker(seed):
    img, lab = synth_image(seed, (128, 128), kind="brightfield", n_objects=20, radius=(6, 9))
    assert lab.max() > 5
    assert _contrast(img, lab).max() < -0.3


@pytest.mark.parametrize("seed", range(5))
def test_multichannel_labels_are_cells_around_nuclei(seed):
    img, lab = synth_image(seed, (128, 128), kind="multichannel", n_objects=12, radius=(5, 7))
    assert lab.max() > 3
    c = _contrast(img, lab)
    assert c.max() > 0.5  # the cytoplasm channel marks the labelled cells
    # cells are grown well beyond their nuclei (radius >= 5 px, area >= 79 px)
    assert np.bincount(lab.ravel())[1:].mean() > 1.5 * np.pi * 5**2


def test_objects_touch_sometimes():
    touching = 0
    for seed in range(10):
        _, lab = synth_image(seed, (128, 128), kind="fluorescence", n_objects=60, radius=(6, 9))
        grown = ndi.grey_dilation(lab, size=3)
        touching += int(((grown != lab) & (lab > 0) & (grown > 0)).sum())
    assert touching > 0


def test_radius_controls_object_size():
    _, small = synth_image(1, (128, 128), kind="fluorescence", n_objects=15, radius=(3, 4))
    _, big = synth_image(1, (128, 128), kind="fluorescence", n_objects=15, radius=(10, 12))
    area = lambda lab: np.bincount(lab.ravel())[1:].mean()  # noqa: E731
    assert area(big) > 4 * area(small)


@pytest.mark.parametrize(
    "kwargs",
    [{"kind": "confocal"}, {"radius": (5, 2)}, {"radius": (0, 3)}],
)
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ParameterError):
        synth_image(0, (64, 64), **kwargs)


def test_bad_shape_is_refused():
    with pytest.raises(ParameterError, match="shape"):
        synth_image(0, (8, 64))


def test_dataset_items_follow_seeds():
    ds = SynthDataset(3, seed=100, shape=(48, 48), kind="fluorescence")
    assert len(ds) == 3
    img, lab = ds[2]
    ref_img, ref_lab = synth_image(102, (48, 48), kind="fluorescence")
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)
    with pytest.raises(IndexError):
        ds[3]
    assert ds.describe()["seed"] == 100


def test_touching_objects_meet_at_a_darker_seam():
    # Real nuclei dim towards their own outline, so a contact line shows between neighbours:
    # two equally bright squares side by side, no texture.
    lab = np.zeros((40, 60), dtype=np.int32)
    lab[10:30, 10:30] = 1
    lab[10:30, 30:50] = 2
    dim = 0
    for seed in range(10):
        field = object_field(np.random.default_rng(seed), lab, 0.5, 0.5, 0.0)
        seam = field[15:25, 29:31].mean()  # the two columns where the squares meet
        core = np.concatenate([field[15:25, 18:22], field[15:25, 38:42]]).mean()
        assert seam <= core
        dim += int(seam < 0.97 * core)
    assert dim >= 7  # the dimming strength is drawn per image, sometimes near zero


def test_some_images_hold_a_few_much_brighter_objects():
    # mitotic nuclei: several times the typical level, so they saturate once displayed
    found = 0
    for seed in range(12):
        img, lab = synth_image(seed, (128, 128), kind="fluorescence", n_objects=60, radius=(5, 7))
        level = ndi.median(img.astype(np.float64), lab, index=np.arange(1, lab.max() + 1))
        found += int(np.max(level) > 2.5 * np.median(level))
    assert 0 < found < 12


def test_nuclei_images_follow_seeds_and_vary_in_size_and_crowding():
    a_img, a_lab = nuclei_image(3)
    b_img, b_lab = nuclei_image(3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    shapes, counts = set(), []
    for seed in range(10):
        img, lab = nuclei_image(seed)
        assert img.dtype == np.uint16 and img.shape == lab.shape
        assert 256 <= max(img.shape) <= 448
        shapes.add(img.shape)
        counts.append(int(lab.max()))
    assert len(shapes) > 5
    assert max(counts) > 4 * max(1, min(counts))


def test_nuclei_dataset_items_follow_seeds():
    ds = NucleiDataset(4, seed=50)
    img, lab = ds[1]
    ref_img, ref_lab = nuclei_image(51)
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)
    assert ds.describe() == {
        "generator": "samlib.datasets.synth.nuclei_image",
        "length": 4,
        "seed": 50,
        "frame": 256,
    }
    with pytest.raises(IndexError):
        ds[4]


def test_nuclei_dataset_passes_its_options_and_records_them():
    options = dict(glow=True, defocus=True, touching=True, min_axis_ratio=0.3)
    ds = NucleiDataset(2, seed=60, **options)
    img, lab = ds[0]
    ref_img, ref_lab = nuclei_image(60, **options)
    np.testing.assert_array_equal(img, ref_img)
    np.testing.assert_array_equal(lab, ref_lab)
    assert ds.describe()["glow"] is True and ds.describe()["defocus"] is True
    assert ds.describe()["touching"] is True
    assert ds.describe()["min_axis_ratio"] == 0.3


def _ring_over_far(img: np.ndarray, lab: np.ndarray) -> float:
    """Mean background brightness just outside the nuclei over that far from them."""
    dist = ndi.distance_transform_edt(lab == 0)
    bg = img.astype(np.float64)
    return bg[(dist > 0) & (dist <= 3)].mean() / max(bg[dist > 12].mean(), 1e-9)


def _changed_by(keep_labels: bool = True, **option) -> list[tuple[np.ndarray, ...]]:
    """(plain, with option, labels, labels with option) for seeds 0-8 the option changes.

    Checks that the option changes two images in three, keeps the layout's size and, with
    ``keep_labels``, the labels.
    """
    out = []
    for seed in range(9):
        plain, lab = nuclei_image(seed)
        other, other_lab = nuclei_image(seed, **option)
        assert other.shape == plain.shape
        if keep_labels:
            np.testing.assert_array_equal(lab, other_lab)
        if not (np.array_equal(plain, other) and np.array_equal(lab, other_lab)):
            out.append((plain, other, lab, other_lab))
    assert 3 <= len(out) < 9  # two images in three, by the seed
    return out


def test_glow_lights_the_background_near_nuclei_and_keeps_the_labels():
    for plain, lit, lab, _ in _changed_by(glow=True):
        assert _ring_over_far(lit, lab) > _ring_over_far(plain, lab)


def _edge_and_noise(img: np.ndarray, lab: np.ndarray) -> tuple[float, float]:
    """Mean gradient on the nuclei's outlines, and pixel-scale noise in the background."""
    x = img.astype(np.float64)
    grad = np.hypot(*np.gradient(ndi.gaussian_filter(x, 1.0)))
    noise = x - ndi.gaussian_filter(x, 1.0)
    far = ndi.distance_transform_edt(lab == 0) > 8
    return grad[find_boundaries(lab)].mean(), noise[far].std()


def test_defocus_softens_the_edges_keeps_the_noise_and_the_labels():
    edge_ratios = []
    for plain, soft, lab, _ in _changed_by(defocus=True):
        (edge0, noise0), (edge1, noise1) = _edge_and_noise(plain, lab), _edge_and_noise(soft, lab)
        edge_ratios.append(edge1 / edge0)
        assert noise1 > 0.5 * noise0  # blurring alone would wipe out the pixel noise
    # The blur scales with the nuclei: barely visible on 3-px nuclei, strong on large ones.
    assert np.mean(edge_ratios) < 0.85 and max(edge_ratios) < 1.05


def _touching_share(lab: np.ndarray) -> float:
    """Share of the labelled objects that touch another one (8-connected)."""
    touching = 0
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        crop = lab[grown]
        ring = ndi.binary_dilation(crop == i, structure=np.ones((3, 3))) & (crop != i)
        touching += bool((crop[ring] > 0).any())
    return touching / max(int(lab.max()), 1)


def test_touching_packs_nuclei_into_clumps_in_two_images_of_three():
    changed = _changed_by(keep_labels=False, touching=True)
    plain_share = [_touching_share(lab) for _, _, lab, _ in changed]
    packed_share = [_touching_share(packed) for _, _, _, packed in changed]
    assert np.mean(packed_share) > 1.5 * np.mean(plain_share)
    assert np.mean(packed_share) > 0.3


def test_min_axis_ratio_draws_more_elongated_nuclei():
    def mean_ratio(lab):
        props = [p for p in regionprops(lab) if p.area > 30]
        return np.mean([p.axis_minor_length / p.axis_major_length for p in props])

    for seed in (2, 5):
        _, round_lab = synth_image(seed, (160, 160), kind="fluorescence", min_axis_ratio=0.9)
        _, long_lab = synth_image(seed, (160, 160), kind="fluorescence", min_axis_ratio=0.3)
        assert mean_ratio(long_lab) < mean_ratio(round_lab) - 0.15
    with pytest.raises(ParameterError, match="min_axis_ratio"):
        synth_image(0, (64, 64), min_axis_ratio=0.0)
