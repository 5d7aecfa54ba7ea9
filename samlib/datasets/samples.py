"""Bundled sample images, each with a description and, where known, reference labels.

- ``DSB2018 nuclei``: real fluorescence nuclei with 125 ground-truth instances
  (``samlib/data/dsb2018_nuclei``, attribution in its ``SOURCE.md``);
- ``Cell (scikit-image)`` and ``Immunohistochemistry (scikit-image)``: shipped inside
  scikit-image (``skimage.data``), so they load offline;
- ``Synthetic 2-channel z-stack (16-bit)``: generated here from a fixed seed, with exact
  nuclear labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage import data
from skimage.draw import ellipse
from skimage.segmentation import expand_labels, find_boundaries

from samlib.errors import ParameterError
from samlib.image.microscopy import MicroscopyImage, as_image

DATA_DIR = Path(__file__).resolve().parents[1] / "data"


@dataclass(frozen=True)
class SampleInfo:
    """What the UI shows about a sample before loading it."""

    key: str
    name: str
    description: str
    attribution: str
    has_ground_truth: bool
    loader: Callable[[], tuple[MicroscopyImage, np.ndarray | None]]


def _dsb() -> tuple[MicroscopyImage, np.ndarray]:
    folder = DATA_DIR / "dsb2018_nuclei"
    image = as_image(tifffile.imread(folder / "image.tif"), "YX", name="dsb2018_nuclei.tif")
    return image, tifffile.imread(folder / "mask.tif")


def _cell() -> tuple[MicroscopyImage, None]:
    return as_image(data.cell(), "YX", name="cell.png", pixel_size_um=0.107), None


def _ihc() -> tuple[MicroscopyImage, None]:
    return as_image(data.immunohistochemistry(), "YXC", name="immunohistochemistry.png"), None


def synthetic_stack(
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    n_nuclei: int = 28,
    blur: tuple[float, ...] = (3.0, 1.0, 2.2),
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a 2-channel 16-bit z-stack of cells and its nuclear labels.

    Channel 0 holds nuclei (bright ellipses), channel 1 membranes (the boundaries of cells
    grown around the nuclei). Each plane has its own blur, so one z-plane (index 1) is in
    focus and the others are not.

    Returns
    -------
    stack : ndarray, shape (len(blur), H, W, 2), uint16
        Axes ZYXC.
    labels : ndarray, shape (H, W), uint16
        Nuclear instance labels (1..N, 0 = background).
    """
    if min(shape) < 32 or n_nuclei < 1 or not blur or min(blur) < 0:
        raise ParameterError(f"bad synthetic parameters: shape={shape}, n={n_nuclei}, blur={blur}")
    rng = np.random.default_rng(seed)
    h, w = shape
    labels = np.zeros(shape, np.uint16)
    placed = 0
    for _ in range(n_nuclei * 20):  # rejection sampling: nuclei never touch
        if placed == n_nuclei:
            break
        ry, rx = rng.uniform(6, 12, size=2)
        r, c = rng.uniform(14, h - 14), rng.uniform(14, w - 14)
        rr, cc = ellipse(r, c, ry + 3, rx + 3, shape=shape, rotation=rng.uniform(0, np.pi))
        if labels[rr, cc].any():
            continue
        rr, cc = ellipse(r, c, ry, rx, shape=shape, rotation=rng.uniform(0, np.pi))
        placed += 1
        labels[rr, cc] = placed
    cells = expand_labels(labels, distance=9)
    membrane = find_boundaries(cells, mode="inner").astype(np.float32)
    brightness = np.concatenate([[0.0], rng.uniform(900, 3000, size=placed)]).astype(np.float32)
    nuclei = brightness[labels]
    stack = np.empty((len(blur), h, w, 2), np.uint16)
    for z, sigma in enumerate(blur):
        for ch, (signal, base) in enumerate(((nuclei, 120.0), (membrane * 1800.0, 250.0))):
            plane = ndi.gaussian_filter(signal, sigma) + base
            plane += rng.normal(0.0, 1.0, size=shape).astype(np.float32) * np.sqrt(plane) * 2
            stack[z, ..., ch] = np.clip(np.rint(plane), 0, 65535).astype(np.uint16)
    return stack, labels


def _synthetic() -> tuple[MicroscopyImage, np.ndarray]:
    stack, labels = synthetic_stack()
    return as_image(stack, "ZYXC", name="synthetic_2ch_zstack.tif", pixel_size_um=0.5), labels


SAMPLES: dict[str, SampleInfo] = {
    s.name: s
    for s in (
        SampleInfo(
            "dsb2018",
            "DSB2018 nuclei",
            "Fluorescence image of cell nuclei (512x512, 16-bit) from the 2018 Data Science "
            "Bowl, with a reference segmentation of 125 nuclei.",
            "Caicedo et al., Nature Methods 16, 2019 (BBBC038); via the stardist package "
            "(BSD-3-Clause). See samlib/data/dsb2018_nuclei/SOURCE.md.",
            True,
            _dsb,
        ),
        SampleInfo(
            "cell",
            "Cell (scikit-image)",
            "Quantitative phase image of a single HL60 cell floating in saline (660x550, "
            "8-bit, 0.107 µm/px), with a banding artefact in the background.",
            "Paul Müller et al., Optics Express 26(8), 2018; CC0; from skimage.data.cell.",
            False,
            _cell,
        ),
        SampleInfo(
            "ihc",
            "Immunohistochemistry (scikit-image)",
            "Colonic glands, FHL2 protein revealed with DAB and hematoxylin counterstain "
            "(512x512 RGB brightfield).",
            "Center for Microscopy And Molecular Imaging (CMMI); no known copyright "
            "restrictions; from skimage.data.immunohistochemistry.",
            False,
            _ihc,
        ),
        SampleInfo(
            "synthetic",
            "Synthetic 2-channel z-stack (16-bit)",
            "Generated image: 3 z-planes (plane 1 in focus), channel 0 nuclei, channel 1 "
            "membranes, 16-bit with noise, 0.5 µm/px; the reference labels are the nuclei.",
            "Generated by samlib.datasets.samples.synthetic_stack (seed 0).",
            True,
            _synthetic,
        ),
    )
}


def list_samples() -> list[str]:
    """Return the display names of the bundled samples, in a stable order."""
    return list(SAMPLES)


def sample_info(name: str) -> SampleInfo:
    """Return a sample's :class:`SampleInfo` by display name or short key (case-insensitive)."""
    wanted = name.strip().lower()
    for info in SAMPLES.values():
        if wanted in (info.name.lower(), info.key):
            return info
    raise ParameterError(f"unknown sample {name!r}; available: {list_samples()}")


def load_sample(name: str) -> tuple[MicroscopyImage, np.ndarray | None, str]:
    """Load a bundled sample: ``(image, reference labels or None, description)``.

    The reference labels are an ``(H, W)`` uint16 instance label image matching the image's
    plane size.
    """
    info = sample_info(name)
    image, labels = info.loader()
    return image, labels, info.description
