"""The model registry: every known model, how to build it and where its weights come from.

``REGISTRY`` maps a name to a :class:`ModelEntry` (builder config, URL, size, SHA-256,
file format). The official SAM and micro-sam checkpoints are listed here, and so is the
small demo model shipped inside the package. :mod:`samlib.models.loading` downloads and loads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from samlib.errors import UnknownModelError
from samlib.models.arch import VIT_B, VIT_H, VIT_L, SamConfig
from samlib.models.small_encoder import SMALL_CNN


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it and where its checkpoint comes from.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"vit_b"``.
    config : SamConfig
        Architecture (builder sizes) of the checkpoint.
    url : str or None
        Download address; ``None`` for a checkpoint shipped inside the package.
    size : int or None
        Checkpoint size in bytes, when published.
    sha256 : str or None
        Published SHA-256 (hex); ``None`` where none is published (then the hash is
        recorded on first download and verified afterwards).
    description : str
        One line for users.
    file_format : str
        ``"sam"``, ``"micro_sam"`` or ``"samlib"`` (see the module docstring).
    filename : str
        File name in the cache folder, or path relative to the ``samlib`` package folder
        when ``package_file`` is true.
    package_file : bool
        The checkpoint ships inside the package (no download).
    suggested_params : dict or None
        Segment-everything parameters suited to this model where SAM's defaults are not
        (thresholds for a model whose predicted IoU and stability are not on SAM's scale,
        ``min_mask_region_area``...); the app starts its widgets there and
        ``evaluate-model`` uses them. ``None``: SAM's defaults.
    mask_threshold : float
        Mask logit above which a pixel belongs to the mask (SAM: 0.0), set as the loaded
        model's ``mask_threshold``, which every prompt and generator path reads.
    """

    name: str
    config: SamConfig
    url: str | None
    size: int | None
    sha256: str | None
    description: str
    file_format: str
    filename: str
    package_file: bool = False
    suggested_params: dict[str, float] | None = None
    mask_threshold: float = 0.0


_FB = "https://dl.fbaipublicfiles.com/segment_anything"
_EBI = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io"

REGISTRY: dict[str, ModelEntry] = {
    "vit_b": ModelEntry(
        name="vit_b",
        config=VIT_B,
        url=f"{_FB}/sam_vit_b_01ec64.pth",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        description="SAM ViT-B (Meta, 91M parameters): the fastest official model",
        file_format="sam",
        filename="sam_vit_b_01ec64.pth",
    ),
    "vit_l": ModelEntry(
        name="vit_l",
        config=VIT_L,
        url=f"{_FB}/sam_vit_l_0b3195.pth",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        description="SAM ViT-L (Meta, 308M parameters)",
        file_format="sam",
        filename="sam_vit_l_0b3195.pth",
    ),
    "vit_h": ModelEntry(
        name="vit_h",
        config=VIT_H,
        url=f"{_FB}/sam_vit_h_4b8939.pth",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        description="SAM ViT-H (Meta, 636M parameters): the largest, slowest official model",
        file_format="sam",
        filename="sam_vit_h_4b8939.pth",
    ),
    "vit_b_lm": ModelEntry(
        name="vit_b_lm",
        config=VIT_B,
        url=f"{_EBI}/diplomatic-bug/1.2/files/vit_b.pt",
        size=None,
        sha256=None,
        description="micro-sam ViT-B fine-tuned on light microscopy (cells and nuclei)",
        file_format="micro_sam",
        filename="micro_sam_vit_b_lm.pt",
    ),
    "vit_l_lm": ModelEntry(
        name="vit_l_lm",
        config=VIT_L,
        url=f"{_EBI}/idealistic-rat/1.2/files/vit_l.pt",
        size=None,
        sha256=None,
        description="micro-sam ViT-L fine-tuned on light microscopy (cells and nuclei)",
        file_format="micro_sam",
        filename="micro_sam_vit_l_lm.pt",
    ),
}

# Preferred order when choosing a default among downloaded models (microscopy first).
DOWNLOAD_PREFERENCE = ("vit_b_lm", "vit_b", "vit_l_lm", "vit_l", "vit_h")


def register_model(entry: ModelEntry, *, replace: bool = False) -> None:
    """Add ``entry`` to :data:`REGISTRY` (e.g. a small model shipped inside the package)."""
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"a model named {entry.name!r} is already registered")
    if entry.url is None and not entry.package_file:
        raise ValueError(f"model {entry.name!r} needs a URL or package_file=True")
    REGISTRY[entry.name] = entry


def registered(name: str) -> ModelEntry:
    """The entry of model ``name``; :class:`UnknownModelError` names the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}"
        ) from None


# -- the bundled small demo model --------------------------------------------------------
# Trained from scratch, in five stages, on synthetic images by
# scripts/train_small_prompts.py (see samlib/weights/small_cnn.json for data, parameters
# and metrics). Registered here so that something runs offline; default_model_name()
# picks it only when no official checkpoint is cached.
def _register_bundled() -> None:
    register_model(
        ModelEntry(
            name="small_cnn",
            config=SMALL_CNN,
            url=None,
            size=_SMALL_CNN_SIZE,
            sha256=_SMALL_CNN_SHA256,
            description=(
                "Small demo model, not SAM: a 1.2M-parameter SAM-architecture model with a "
                "CNN encoder, trained on synthetic images; for trying the app offline only"
            ),
            file_format="samlib",
            filename="weights/small_cnn.pt",
            package_file=True,
            suggested_params=_SMALL_CNN_PARAMS,
            mask_threshold=_SMALL_CNN_MASK_THRESHOLD,
        ),
        replace=True,
    )


# Chosen by scripts/calibrate_thresholds.py on synthetic validation images: the mask
# threshold by point and box prompts, then the segment-everything thresholds with it.
_SMALL_CNN_MASK_THRESHOLD = -2.0
_SMALL_CNN_PARAMS: dict[str, float] | None = {
    "pred_iou_thresh": 0.65,
    "stability_score_thresh": 0.9,
    "box_nms_thresh": 0.5,
    "min_mask_region_area": 256,
}
_SMALL_CNN_SIZE: int | None = 4955915
_SMALL_CNN_SHA256: str | None = "1c0fbacb673cff94ffd25c9e0768eb5794fe75b01e8f2eab8d6e974de4ca7dca"
_register_bundled()
