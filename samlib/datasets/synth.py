"""Synthetic microscopy images with known instance labels, reproducible from a seed.

Used to train the bundled small demo model and in tests. Every image is drawn from its
label image, so the labels are exact: objects of varied size, shape, brightness and
texture, touching and partly overlapping (a later object hides an earlier one), then
blur, uneven background and noise. Three kinds:

- ``"fluorescence"``: bright nuclei or cells on a dark background, 2-D uint16;
- ``"brightfield"``: darker, rimmed objects on a bright background, 2-D uint8 or HWC RGB uint8;
- ``"multichannel"``: HWC uint16 with a nuclear channel, a cytoplasm channel (labels are
  whole cells) and sometimes a third, unrelated channel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, find_boundaries

from samlib.errors import ParameterError

KINDS = ("fluorescence", "brightfield", "multichannel")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit std (float32 HxW)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (field - field.mean()) / (field.std() + 1e-8)


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """An uneven-illumination field around 1.0: a tilt plus a broad blob (float32 HxW)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = rng.uniform(-0.4, 0.4) * (yy / h - 0.5) + rng.uniform(-0.4, 0.4) * (xx / w - 0.5)
    blob = rng.uniform(0.0, 0.3) * _smooth_noise(rng, shape, max(h, w) / 6)
    return 1.0 + tilt + blob


# How far apart a new object's centre must be from each placed one, in summed radii: 0.5
# and 0.85 let the two overlap (the later hides part of the earlier), 1.0 at most touches.
_APART_P = [0.15, 0.35, 0.5]
_TOUCHING_P = [0.3, 0.55, 0.15]


def _draw_objects(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n: int,
    r_lo: float,
    r_hi: float,
    min_axis_ratio: float = 0.45,
    touching: bool = False,
) -> np.ndarray:
    """Star-convex blobs with random centres, later ones hiding earlier ones (int32 labels).

    ``touching`` grows clumps: eight new objects in ten are placed against a placed one, and
    the spacing rule lets more of them overlap.
    """
    h, w = shape
    labels = np.zeros(shape, dtype=np.int32)
    if rng.random() < 0.4:  # clustered colonies rather than a uniform scatter
        k = int(rng.integers(1, 4))
        hubs = rng.uniform((0, 0), (h, w), size=(k, 2))
        spread = rng.uniform(0.08, 0.25) * max(h, w)
        centres = hubs[rng.integers(0, k, n)] + rng.normal(0, spread, (n, 2))
    else:
        centres = rng.uniform((0, 0), (h, w), size=(n, 2))
    placed: list[tuple[float, float, float]] = []
    next_label = 1
    for cy, cx in centres:
        r = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
        if touching and placed and rng.random() < 0.8:  # grow a clump: next to a placed one
            y, x, q = placed[int(rng.integers(len(placed)))]
            ang, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 0.95) * (r + q)
            cy, cx = y + d * np.sin(ang), x + d * np.cos(ang)
        # Keep most pairs apart; a few may overlap strongly (touching, clumped nuclei).
        min_sep = rng.choice([0.5, 0.85, 1.0], p=_TOUCHING_P if touching else _APART_P)
        if any(np.hypot(cy - y, cx - x) < min_sep * (r + q) for y, x, q in placed):
            continue
        placed.append((cy, cx, r))
        ecc = rng.uniform(min_axis_ratio, 1.0)
        theta = rng.uniform(0, np.pi)
        harm = rng.normal(0, 0.06, 4) / np.arange(1, 5)
        phase = rng.uniform(0, 2 * np.pi, 4)
        ext = int(np.ceil(r * 1.4)) + 1
        y0, y1 = max(0, int(cy) - ext), min(h, int(cy) + ext + 1)
        x0, x1 = max(0, int(cx) - ext), min(w, int(cx) + ext + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        ang = np.arctan2(dy, dx)
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        rho = np.hypot(u, v / ecc)
        wobble = 1.0 + sum(
            a * np.cos((k + 2) * ang + p) for k, (a, p) in enumerate(zip(harm, phase, strict=True))
        )
        inside = rho <= r * wobble
        labels[y0:y1, x0:x1][inside] = next_label
        next_label += 1
    return labels


def _clean(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Keep each label's largest piece if big enough; relabel 1..N in scan order (int32)."""
    out = np.zeros_like(labels)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        pieces, n = ndi.label(labels[sl] == i)
        if n == 0:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        if sizes.max() >= min_area:
            out[sl][pieces == 1 + int(sizes.argmax())] = i
    _, inverse = np.unique(out, return_inverse=True)
    return inverse.reshape(out.shape).astype(np.int32)


def object_field(
    rng: np.random.Generator, labels: np.ndarray, lo: float, hi: float, texture: float
) -> np.ndarray:
    """Per-object brightness in [lo, hi] times a texture and a centre-bright profile.

    The profile dims each object towards its own outline, so touching objects show a
    darker seam where they meet, as real nuclei do. In some images a few objects are
    several times brighter than the rest (mitotic nuclei), and saturate once displayed.
    """
    n = int(labels.max())
    level = rng.uniform(lo, hi, n)
    if n and rng.random() < 0.35:
        bright = rng.random(n) < rng.uniform(0.01, 0.06)
        level[bright] *= rng.uniform(2.0, 5.0, int(bright.sum()))
    level = np.concatenate([[0.0], level]).astype(np.float32)
    field = level[labels]
    tex = 1.0 + texture * _smooth_noise(rng, labels.shape, rng.uniform(0.7, 2.0))
    outline = (labels == 0) | find_boundaries(labels, mode="inner")
    dist = ndi.distance_transform_edt(~outline).astype(np.float32) + 1.0
    profile = 1.0 - rng.uniform(0.0, 0.4) * np.exp(-dist / 2.0)
    spots = (_smooth_noise(rng, labels.shape, 1.0) > 2.2) * rng.uniform(0, 0.5)  # nucleoli
    return field * np.clip(tex, 0.2, None) * profile * (1.0 + spots)


def _finish(rng: np.random.Generator, signal: np.ndarray, blur: float, snr: float) -> np.ndarray:
    """Blur, then add shot and read noise (float32, same shape)."""
    out = ndi.gaussian_filter(signal, blur) if blur > 0 else signal
    photons = rng.uniform(30, 400) * snr
    out = rng.poisson(np.clip(out, 0, None) * photons).astype(np.float32) / photons
    return out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape).astype(np.float32)


def _to_uint(img: np.ndarray, rng: np.random.Generator, dtype: type) -> np.ndarray:
    top = float(np.iinfo(dtype).max)
    scale = top if dtype is np.uint8 else rng.uniform(300.0, top)
    hi = np.percentile(img, 99.9) + 1e-6
    return np.clip(img / hi * scale * rng.uniform(0.6, 1.0), 0, top).astype(dtype)


def synth_image(
    seed: int,
    shape: tuple[int, int] = (256, 256),
    *,
    kind: str | None = None,
    n_objects: int | None = None,
    radius: tuple[float, float] | None = None,
    min_axis_ratio: float = 0.45,
    touching: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic microscopy image and its instance labels from a seed.

    Parameters
    ----------
    seed : int
        Everything (kind, sizes, positions, noise) follows from it: equal seeds give equal
        outputs.
    shape : (H, W)
        Image size in pixels.
    kind : {"fluorescence", "brightfield", "multichannel"}, optional
        Random (from the seed) when omitted.
    n_objects : int, optional
        Objects to try to place (some are rejected for crowding); random when omitted.
    radius : (low, high), optional
        Range of object radii in pixels (log-uniform); random when omitted.
    min_axis_ratio : float
        Lowest minor/major axis ratio of an object (uniform up to 1): lower draws more
        elongated objects.
    touching : bool
        Pack neighbours closer: most objects touch or partly overlap another (clumps).

    Returns
    -------
    image : ndarray
        HxW uint16 (fluorescence), HxW or HxWx3 uint8 (brightfield) or HxWxC uint16 with
        C in {2, 3} (multichannel).
    labels : ndarray
        HxW int32 instance labels, 0 = background, 1..N each one connected object.
    """
    if kind is not None and kind not in KINDS:
        raise ParameterError(f"unknown synthetic image kind {kind!r}; known: {KINDS}")
    if len(shape) != 2 or min(shape) < 16:
        raise ParameterError(f"shape must be (H, W) with both >= 16, got {shape!r}")
    rng = np.random.default_rng(seed)
    shape = (int(shape[0]), int(shape[1]))
    kind = kind or str(rng.choice(KINDS, p=[0.5, 0.25, 0.25]))
    if radius is None:
        lo = float(np.exp(rng.uniform(np.log(3.0), np.log(14.0))))
        radius = (lo, lo * rng.uniform(1.2, 2.2))
    r_lo, r_hi = float(radius[0]), float(radius[1])
    if not 0 < r_lo <= r_hi:
        raise ParameterError(f"radius must be 0 < low <= high, got {radius!r}")
    if not 0 < min_axis_ratio <= 1:
        raise ParameterError(f"min_axis_ratio must be in (0, 1], got {min_axis_ratio!r}")
    if n_objects is None:
        density = rng.uniform(0.1, 0.55)
        n_objects = int(density * shape[0] * shape[1] / (np.pi * (r_lo * r_hi)))
    n_objects = max(1, int(n_objects))
    grow = kind == "multichannel"
    labels = _draw_objects(rng, shape, n_objects, r_lo, r_hi, min_axis_ratio, touching)
    labels = _clean(labels, min_area=max(4, int(0.3 * np.pi * r_lo**2)))
    bg = _background(rng, shape)
    blur = rng.uniform(0.0, 1.6)
    snr = np.exp(rng.uniform(np.log(0.3), np.log(3.0)))

    if kind == "fluorescence":
        obj = object_field(rng, labels, 0.25, 1.0, rng.uniform(0.0, 0.35))
        img = obj + rng.uniform(0.0, 0.15) * bg
        return _to_uint(_finish(rng, img, blur, snr), rng, np.uint16), labels

    if kind == "brightfield":
        obj = object_field(rng, labels, 0.15, 0.6, rng.uniform(0.05, 0.4))
        rim = find_boundaries(labels, mode="inner").astype(np.float32)
        rim = ndi.gaussian_filter(rim, 0.8) * rng.uniform(0.0, 1.5)
        img = bg * (1.0 - obj - rim * 0.3) + 0.2
        img = _finish(rng, img, blur, snr * 3)
        if rng.random() < 0.5:
            return _to_uint(img, rng, np.uint8), labels
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)  # a stained-section look
        rgb = 1.0 - (1.0 - img[..., None] / img.max()) * tint
        return _to_uint(rgb, rng, np.uint8), labels

    # multichannel: nuclei in one channel, labels are whole cells grown around them
    assert grow
    nuclei = labels
    cells = expand_labels(nuclei, distance=rng.uniform(0.6, 1.6) * r_hi)
    nuc = _finish(rng, object_field(rng, nuclei, 0.4, 1.0, 0.2) + 0.05 * bg, blur, snr)
    cyto_level = object_field(rng, cells, 0.2, 0.7, rng.uniform(0.1, 0.5))
    edges = find_boundaries(cells, mode="inner") * rng.uniform(0.0, 0.6)
    cyto = _finish(rng, cyto_level * (1.0 + edges) + 0.05 * bg, blur, snr)
    chans = [nuc, cyto]
    if rng.random() < 0.4:
        chans.append(_finish(rng, 0.3 * bg * (1 + 0.3 * _smooth_noise(rng, shape, 4)), 0, snr))
    order = rng.permutation(len(chans))
    img = np.stack([chans[i] for i in order], axis=-1)
    return _to_uint(img, rng, np.uint16), cells.astype(np.int32)


def nuclei_image(
    seed: int,
    frame: int = 256,
    *,
    min_axis_ratio: float = 0.45,
    glow: bool = False,
    defocus: bool = False,
    touching: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence nuclei image of random size, scale and crowding, from a seed.

    The bundled demo model's training distribution. Sides are ``frame`` to 1.75 ``frame``
    px (three in ten not square); once the longest side is brought to ``frame`` px, as the
    model does, nuclei have radii from 3-7.5 px up to 1.25-2 times that, and cover 5-50 %
    of the image: sparse fields to crowded, touching colonies. ``min_axis_ratio`` as in
    :func:`synth_image`; ``glow`` adds, in two images of three, out-of-focus light (the
    image blurred wide) around the nuclei, as widefield microscopes show. ``defocus``
    softens, in two images of three, the nuclei's edges by a blur of 0.15-0.45 of their
    smallest radius while keeping the pixel noise (out-of-focus nuclei are soft, not
    noise-free). ``touching``, in two images of three, packs the nuclei into clumps where
    most touch or overlap a neighbour (see :func:`synth_image`). The labels keep the
    nuclei's own outlines, so a bright nucleus's halo is background. The defaults give the
    images the demo model's first training stage used (unchanged by the options).

    Returns
    -------
    image : ndarray
        HxW uint16.
    labels : ndarray
        HxW int32 instance labels.
    """
    rng = np.random.default_rng([seed, 1])  # the layout; synth_image(seed) draws the pixels
    h = int(rng.integers(frame, int(1.75 * frame) + 1))
    w = h if rng.random() < 0.7 else int(np.clip(h * rng.uniform(0.6, 1.4), 32, 1.75 * frame))
    scale = max(h, w) / frame
    lo = float(np.exp(rng.uniform(np.log(3.0), np.log(7.5)))) * scale
    hi = lo * float(rng.uniform(1.25, 2.0))
    n = int(rng.uniform(0.05, 0.5) * h * w / (np.pi * lo * hi))
    img, labels = synth_image(
        seed,
        (h, w),
        kind="fluorescence",
        n_objects=n,
        radius=(lo, hi),
        min_axis_ratio=min_axis_ratio,
        touching=touching and np.random.default_rng([seed, 4]).random() >= 1 / 3,
    )
    if defocus:
        img = add_defocus(np.random.default_rng([seed, 3]), img, lo)
    if glow:
        img = add_glow(np.random.default_rng([seed, 2]), img, lo)
    return img, labels


def add_defocus(rng: np.random.Generator, img: np.ndarray, radius: float) -> np.ndarray:
    """Soft edges: the image blurred over 0.15-0.45 radii, plus its own pixel-scale noise."""
    if rng.random() < 1 / 3:
        return img
    top = float(np.iinfo(img.dtype).max)
    sharp = img.astype(np.float32)
    noise = sharp - ndi.gaussian_filter(sharp, 1.0)
    out = ndi.gaussian_filter(sharp, rng.uniform(0.15, 0.45) * radius) + noise
    return np.clip(out, 0, top).astype(img.dtype)


def add_glow(rng: np.random.Generator, img: np.ndarray, radius: float) -> np.ndarray:
    """Out-of-focus light: the image plus 10-50 % of itself blurred over 0.5-1.5 radii."""
    if rng.random() < 1 / 3:
        return img
    top = float(np.iinfo(img.dtype).max)
    sharp = img.astype(np.float32)
    halo = ndi.gaussian_filter(sharp, rng.uniform(0.5, 1.5) * radius)
    out = sharp + rng.uniform(0.1, 0.5) * halo
    return np.clip(out, 0, top).astype(img.dtype)


class SynthDataset:
    """A lazy, indexable sequence of ``synth_image`` pairs: item ``i`` uses seed ``seed + i``.

    Parameters
    ----------
    length : int
        Number of items.
    seed : int
        Seed of item 0.
    shape : (H, W)
        Image size.
    **kwargs
        Passed to :func:`synth_image` (``kind``, ``n_objects``, ``radius``).
    """

    def __init__(
        self, length: int, seed: int = 0, shape: tuple[int, int] = (256, 256), **kwargs
    ) -> None:
        if length < 1:
            raise ParameterError(f"length must be >= 1, got {length!r}")
        self.length, self.seed, self.shape, self.kwargs = int(length), int(seed), shape, kwargs

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} images")
        return self._draw(self.seed + i % self.length)

    def _draw(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return synth_image(seed, self.shape, **self.kwargs)

    def describe(self) -> dict:
        """Plain-JSON description (for training sidecars)."""
        return {
            "generator": "samlib.datasets.synth.synth_image",
            "length": self.length,
            "seed": self.seed,
            "shape": list(self.shape),
            **self.kwargs,
        }


class NucleiDataset(SynthDataset):
    """A lazy sequence of :func:`nuclei_image` pairs: item ``i`` uses seed ``seed + i``."""

    def __init__(self, length: int, seed: int = 0, frame: int = 256, **kwargs) -> None:
        super().__init__(length, seed, **kwargs)  # kwargs: nuclei_image's options
        self.frame = int(frame)

    def _draw(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return nuclei_image(seed, self.frame, **self.kwargs)

    def describe(self) -> dict:
        """Plain-JSON description (for training sidecars)."""
        return {
            "generator": "samlib.datasets.synth.nuclei_image",
            "length": self.length,
            "seed": self.seed,
            "frame": self.frame,
            **self.kwargs,
        }
