"""What one user is working on: the chosen image, its display settings, prompted objects.

The Streamlit app keeps these objects in each browser session's state; this module holds
the logic so that it stays testable without a UI (it never imports streamlit).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from samlib.errors import ParameterError, ReferenceLabelsError
from samlib.image.display import DisplaySettings
from samlib.image.io import read_image
from samlib.image.microscopy import MicroscopyImage, image_hash


@dataclass(frozen=True, eq=False)
class WorkImage:
    """An image ready for SAM: the original data, its RGB rendering and how it was made.

    Attributes
    ----------
    image : MicroscopyImage
        Original data (measurements use it).
    rgb8 : (H, W, 3) uint8
        What SAM sees.
    settings : DisplaySettings
    pixel_size_um : float or None
        Micrometres per pixel; areas are also reported in µm² when set.
    ground_truth : (H, W) integer label image or None
        Reference segmentation shipped with a sample or uploaded for the image
        (:func:`reference_labels`), if any.
    description : str
        A sentence about the image (samples), shown in the UI.
    """

    image: MicroscopyImage
    rgb8: np.ndarray
    settings: DisplaySettings
    pixel_size_um: float | None = None
    ground_truth: np.ndarray | None = None
    description: str = ""

    @property
    def name(self) -> str:
        """The image's display name."""
        return self.image.name

    @property
    def size_xy(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return int(self.rgb8.shape[1]), int(self.rgb8.shape[0])

    @cached_property
    def key(self) -> str:
        """Identifies this rendering: hash of the RGB pixels (results are only valid for it)."""
        return image_hash(self.rgb8)

    @cached_property
    def reference_key(self) -> str:
        """Identifies the reference labels (hash of the label image; "" when there are none):
        scores against one reference are not valid for another."""
        return "" if self.ground_truth is None else image_hash(self.ground_truth)

    @property
    def intensities(self) -> np.ndarray:
        """The original (Y, X, C) data of the displayed plane, for measurements."""
        return self.image.plane(self.settings.plane)


def prepare_image(
    image: MicroscopyImage,
    settings: DisplaySettings | None = None,
    *,
    pixel_size_um: float | None = None,
    ground_truth: np.ndarray | None = None,
    description: str = "",
) -> WorkImage:
    """Render ``image`` to RGB with ``settings`` and bundle everything the pages need.

    Raises :class:`~samlib.errors.ParameterError` for settings that do not fit the image
    and for a non-positive pixel size.
    """
    settings = settings or DisplaySettings.default_for(image)
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ParameterError(f"pixel size must be a positive number of µm, got {pixel_size_um!r}")
    rgb8 = settings.render(image)
    if ground_truth is not None and ground_truth.shape[:2] != rgb8.shape[:2]:
        ground_truth = None  # a reference for another size cannot be compared
    return WorkImage(image, rgb8, settings, pixel_size_um, ground_truth, description)


def reference_labels(image: MicroscopyImage, source: Any, *, name: str | None = None) -> np.ndarray:
    """Read a reference label image for ``image`` and check that it can be compared with it.

    Parameters
    ----------
    image : MicroscopyImage
        The image the labels belong to.
    source : path, bytes or binary file object
        A label TIFF or PNG (0 = background, one whole number per object), read with
        :func:`samlib.image.io.read_image`.
    name : str, optional
        The file's name, for messages.

    Returns
    -------
    ndarray, shape (H, W)
        Integer labels (float files holding whole numbers become int64).

    Raises
    ------
    ReferenceLabelsError
        More than one plane or channel, values that are not whole numbers >= 0, or another
        width x height than ``image``; the message names both sizes.
    ImageError
        The file cannot be read (see :func:`~samlib.image.io.read_image`).
    """
    ref = read_image(source, name=name)
    label = ref.name
    if ref.n_planes != 1 or ref.n_channels != 1:
        raise ReferenceLabelsError(
            f"{label}: a label image has one plane and one channel, this one has "
            f"{ref.n_planes} plane(s) and {ref.n_channels} channel(s)"
        )
    if (ref.width, ref.height) != (image.width, image.height):
        raise ReferenceLabelsError(
            f"{label} is {ref.width} x {ref.height} px but the image {image.name} is "
            f"{image.width} x {image.height} px (width x height): they must match"
        )
    labels = ref.data[0, ..., 0]
    if labels.dtype.kind == "f":  # e.g. labels saved as a float TIFF
        if not (np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
            raise ReferenceLabelsError(
                f"{label}: a {labels.dtype} label image must hold whole numbers (object ids)"
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "ui":
        raise ReferenceLabelsError(
            f"{label}: a label image holds whole numbers (object ids), got {labels.dtype}"
        )
    if labels.size and labels.min() < 0:
        raise ReferenceLabelsError(
            f"{label}: object ids must be >= 0 (0 = background), got {labels.min()}"
        )
    return labels


def estimate_encode_seconds(n_parameters: int, device_type: str) -> float:
    """Rough seconds one image-encoder pass takes, for a spinner message.

    Calibrated on SAM ViT-B (91 M parameters): about 10 s on a laptop CPU and 0.3 s on a
    recent GPU; time grows roughly with the parameter count.
    """
    per_million = 0.11 if device_type == "cpu" else 0.0035
    return max(0.1, n_parameters / 1e6 * per_million)


#: Uploaded images one session keeps: the newest three. Each is the decoded image (up to
#: samlib.image.io.DEFAULT_MAX_PIXELS values), so keeping every upload would let one visitor
#: fill a shared server's memory.
MAX_UPLOADS = 3


class RecentUploads:
    """The newest uploads of one session, by upload id, at most ``max_items``.

    Keyed by the id the browser gave the upload (Streamlit's ``UploadedFile.file_id``), so
    that finding an upload again never reads or hashes its bytes. Values are whatever the
    page made of the file (the image read from it, or the error that reading raised).
    Looking an upload up or adding it makes it the newest; adding one more than
    ``max_items`` drops the oldest.
    """

    def __init__(self, max_items: int = MAX_UPLOADS) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ParameterError(f"max_items must be a positive integer, got {max_items!r}")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any:
        """The value kept for ``key`` (now the newest), or None."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` for ``key`` as the newest; drop the oldest beyond ``max_items``."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def values(self) -> list[Any]:
        """The kept values, oldest first."""
        return list(self._items.values())
