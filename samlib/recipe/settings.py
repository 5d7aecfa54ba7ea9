"""The recipe's settings: dataclasses, their JSON and its checks (see :mod:`samlib.recipe`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

import samlib
from samlib.errors import RecipeError, SamlibError
from samlib.everything.params import GeneratorParams
from samlib.image.display import DisplaySettings
from samlib.prompts.objects import PromptedObject, PromptSet
from samlib.recipe.checks import (
    check_bool,
    check_int,
    check_number,
    construct,
    known_keys,
    mapping,
    number_value,
)

__all__ = [
    "KINDS",
    "RECIPE_VERSION",
    "EverythingSettings",
    "Tiling",
    "LiveFilters",
    "ModelRef",
    "ObjectPrompts",
    "Recipe",
    "read_recipe",
]

RECIPE_VERSION = 1
KINDS = ("everything", "prompts")
TOP_KEYS = frozenset(
    {"recipe", "kind", "image", "model", "tiling", "everything", "filters", "objects", "provenance"}
)


@dataclass(frozen=True)
class ModelRef:
    """The model: a registry name or checkpoint path, and the SHA-256 of its weights."""

    name: str
    sha256: str | None = None

    @classmethod
    def of(cls, model) -> ModelRef:
        """The reference of a model loaded by :func:`samlib.models.loading.load_model`."""
        info = getattr(model, "samlib_info", None)
        return cls(getattr(info, "name", "model"), getattr(info, "sha256", None))


@dataclass(frozen=True)
class LiveFilters:
    """The filters the Segment everything page applies without running the model.

    Thresholds and NMS as in ``SamAutomaticMaskGenerator``; ``min_area``/``max_area`` in
    pixels, inclusive (None: unbounded).
    """

    pred_iou_thresh: float = GeneratorParams.pred_iou_thresh
    stability_score_thresh: float = GeneratorParams.stability_score_thresh
    box_nms_thresh: float = GeneratorParams.box_nms_thresh
    crop_nms_thresh: float = GeneratorParams.crop_nms_thresh
    drop_whole_image: bool = True
    min_area: float | None = None
    max_area: float | None = None

    def __post_init__(self) -> None:
        for name in ("pred_iou_thresh", "stability_score_thresh"):
            check_number(f"filters.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("box_nms_thresh", "crop_nms_thresh"):
            check_number(f"filters.{name}", getattr(self, name), 0.0, 1.0)
        check_bool("filters.drop_whole_image", self.drop_whole_image)
        for name in ("min_area", "max_area"):
            if getattr(self, name) is not None:
                check_number(f"filters.{name}", getattr(self, name), 0.0, math.inf)
        if self.min_area is not None and self.max_area is not None:
            if self.min_area > self.max_area:
                raise RecipeError(
                    f"recipe filters.min_area {self.min_area} is larger than max_area "
                    f"{self.max_area}"
                )

    @classmethod
    def from_generator(cls, params: GeneratorParams, **changes: Any) -> LiveFilters:
        """Filters at the thresholds ``params`` decoded with (those
        :func:`samlib.everything.refilter.refilter_live` falls back to), ``changes`` on top."""
        names = [f.name for f in fields(cls) if hasattr(params, f.name)]
        return cls(**{**{n: getattr(params, n) for n in names}, **changes})

    def thresholds(self) -> dict[str, float]:
        """The thresholds and NMS values, as :func:`refilter_live` takes them."""
        return {
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "box_nms_thresh": self.box_nms_thresh,
            "crop_nms_thresh": self.crop_nms_thresh,
        }


@dataclass(frozen=True)
class Tiling:
    """Tiles with a halo (:mod:`samlib.tiling`): ``tile_size`` and ``halo`` in pixels;
    masks of two tiles with a mask IoU above ``tile_iou_thresh`` are one object."""

    tile_size: int
    halo: int
    tile_iou_thresh: float = 0.5

    def __post_init__(self) -> None:
        check_int("tiling.tile_size", self.tile_size, 16, 1 << 16)
        check_int("tiling.halo", self.halo, 0, 1 << 16)
        check_number("tiling.tile_iou_thresh", self.tile_iou_thresh, 0.0, 1.0)


@dataclass(frozen=True)
class EverythingSettings:
    """How segment everything decoded: generator parameters, fast mode, the floors, tiles.

    ``iou_floor``/``stability_floor``: the lowest live thresholds the decode kept
    candidates for (None: the generator's defaults). ``tiling``: the image was segmented
    in tiles with a halo (None: whole, at the model's input size).
    """

    generator: GeneratorParams = field(default_factory=GeneratorParams)
    fast: bool = False
    iou_floor: float | None = None
    stability_floor: float | None = None
    tiling: Tiling | None = None

    def __post_init__(self) -> None:
        check_bool("everything.fast", self.fast)
        for name in ("iou_floor", "stability_floor"):
            if getattr(self, name) is not None:
                check_number(f"everything.{name}", getattr(self, name), 0.0, 1.0)
        if self.tiling is not None and not isinstance(self.tiling, Tiling):
            raise RecipeError(
                f"recipe everything.tiling must be tile settings, got {self.tiling!r}"
            )


@dataclass(frozen=True)
class ObjectPrompts:
    """One prompted object: its prompts, the candidate kept and the options.

    ``points`` (N, 2) XY and ``labels`` (N,) (1 foreground, 0 background), ``box`` XYXY
    or None, all in image pixels; ``candidate`` indexes SAM's candidates for them.
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    candidate: int = 0
    multimask: bool = True
    clip_to_box: bool = True

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise RecipeError(
                f"recipe objects: {len(self.points)} points but {len(self.labels)} labels"
            )
        if not self.points and self.box is None:
            raise RecipeError("recipe objects: an object needs points or a box")
        if any(lab not in (0, 1) for lab in self.labels):
            raise RecipeError(f"recipe objects: labels must be 0 or 1, got {list(self.labels)}")
        check_int("objects.candidate", self.candidate, 0, 3)
        check_bool("objects.multimask", self.multimask)
        check_bool("objects.clip_to_box", self.clip_to_box)

    @classmethod
    def of(cls, obj: PromptedObject) -> ObjectPrompts:
        """The prompts that made an accepted object."""
        return cls(
            points=tuple((float(x), float(y)) for x, y in np.asarray(obj.points).reshape(-1, 2)),
            labels=tuple(int(v) for v in np.asarray(obj.labels).reshape(-1)),
            box=None if obj.box is None else tuple(float(v) for v in obj.box),
            candidate=int(obj.candidate),
            multimask=bool(obj.multimask),
            clip_to_box=bool(obj.clip_to_box),
        )

    def prompt_set(self) -> PromptSet:
        """The prompts as :func:`predict_candidates` takes them."""
        return PromptSet(
            np.asarray(self.points, dtype=float).reshape(-1, 2),
            np.asarray(self.labels, dtype=int).reshape(-1),
            np.asarray([] if self.box is None else [self.box], dtype=float).reshape(-1, 4),
        )


@dataclass(frozen=True)
class Recipe:
    """Everything that produced a result (see the module docstring for the JSON)."""

    kind: str
    model: ModelRef
    image: DisplaySettings = field(default_factory=DisplaySettings)
    pixel_size_um: float | None = None
    tiling: Tiling | None = None
    everything: EverythingSettings | None = None
    filters: LiveFilters | None = None
    objects: tuple[ObjectPrompts, ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RecipeError(f"recipe kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "everything" and (self.everything is None or self.filters is None):
            raise RecipeError("a segment-everything recipe needs 'everything' and 'filters'")
        if self.kind == "prompts" and (self.everything is not None or self.filters is not None):
            raise RecipeError("a prompts recipe has 'objects', not 'everything' or 'filters'")
        if self.kind == "everything" and self.objects:
            raise RecipeError("a segment-everything recipe has no 'objects'")
        if self.pixel_size_um is not None:
            check_number("image.pixel_size_um", self.pixel_size_um, 0.0, math.inf, open_low=True)
        if self.tiling is not None and not isinstance(self.tiling, Tiling):
            raise RecipeError(f"recipe tiling must be tile settings, got {self.tiling!r}")

    # -- JSON ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (see the module docstring)."""
        out: dict[str, Any] = {
            "recipe": RECIPE_VERSION,
            "kind": self.kind,
            "image": {**self.image.as_dict(), "pixel_size_um": self.pixel_size_um},
            "model": {"name": self.model.name, "sha256": self.model.sha256},
            "tiling": None if self.tiling is None else asdict(self.tiling),
        }
        if self.everything is not None:
            e = self.everything
            out["everything"] = {
                "generator": e.generator.to_dict(),
                "fast": e.fast,
                "iou_floor": e.iou_floor,
                "stability_floor": e.stability_floor,
            }
        if self.filters is not None:
            out["filters"] = {f.name: getattr(self.filters, f.name) for f in fields(LiveFilters)}
        if self.kind == "prompts":
            out["objects"] = [
                {
                    "points": [list(p) for p in o.points],
                    "labels": list(o.labels),
                    "box": None if o.box is None else list(o.box),
                    "candidate": o.candidate,
                    "multimask": o.multimask,
                    "clip_to_box": o.clip_to_box,
                }
                for o in self.objects
            ]
        if self.provenance:
            out["provenance"] = dict(self.provenance)
        return json.loads(json.dumps(out))

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Parse and check a recipe; raise :class:`~samlib.errors.RecipeError` (one line)."""
        d = mapping("recipe", data)
        known_keys("recipe", d, TOP_KEYS)
        version = d.get("recipe")
        if version != RECIPE_VERSION:
            raise RecipeError(
                f"this is not a version-{RECIPE_VERSION} recipe (its 'recipe' key is "
                f"{version!r}); samlib {samlib.__version__} reads version {RECIPE_VERSION}"
            )
        image = mapping("image", d.get("image", {}))
        known_keys("image", image, {"channels", "percentiles", "gamma", "plane", "pixel_size_um"})
        pixel_size = image.get("pixel_size_um")
        if pixel_size is not None:
            pixel_size = number_value("image.pixel_size_um", pixel_size)
        display = _display(image)
        model = mapping("model", d.get("model"))
        known_keys("model", model, {"name", "sha256"})
        if not isinstance(model.get("name"), str) or not model["name"]:
            raise RecipeError("recipe model.name must be a model name or checkpoint path")
        sha = model.get("sha256")
        if sha is not None and not isinstance(sha, str):
            raise RecipeError(f"recipe model.sha256 must be a hex string, got {sha!r}")
        tiling = None
        if d.get("tiling") is not None:
            tiling = construct(Tiling, "tiling", mapping("tiling", d["tiling"]))
        everything = filters = None
        if "everything" in d:
            everything = _everything(mapping("everything", d["everything"]))
        if "filters" in d:
            filters = construct(LiveFilters, "filters", mapping("filters", d["filters"]))
        objects = ()
        if "objects" in d:
            if not isinstance(d["objects"], list):
                raise RecipeError("recipe objects must be a list")
            objects = tuple(_object(i, o) for i, o in enumerate(d["objects"]))
        provenance = mapping("provenance", d.get("provenance", {}))
        return cls(
            kind=d.get("kind"),
            model=ModelRef(model["name"], sha),
            image=display,
            pixel_size_um=pixel_size,
            tiling=tiling,
            everything=everything,
            filters=filters,
            objects=objects,
            provenance=provenance,
        )

    def with_provenance(self, provenance: Mapping[str, Any]) -> Recipe:
        """A copy carrying ``provenance`` (what the app and the CLI write beside a result)."""
        return replace(self, provenance=dict(provenance))


def read_recipe(source: str | os.PathLike[str]) -> Recipe:
    """Read a recipe from a ``params.json`` file."""
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path} is not a text file, so not a recipe") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return Recipe.from_dict(data)


def _display(image: Mapping[str, Any]) -> DisplaySettings:
    d = {k: v for k, v in image.items() if k != "pixel_size_um"}
    if "channels" in d:
        ch = d["channels"]
        if (
            not isinstance(ch, list)
            or len(ch) != 3
            or not all(
                c is None or (isinstance(c, int) and not isinstance(c, bool) and c >= 0) for c in ch
            )
        ):
            raise RecipeError(
                f"recipe image.channels must be 3 channel numbers or null, got {ch!r}"
            )
        d["channels"] = tuple(ch)
    if "percentiles" in d:
        pr = d["percentiles"]
        if not isinstance(pr, list) or len(pr) != 2:
            raise RecipeError(f"recipe image.percentiles must be [low, high], got {pr!r}")
        lo, hi = (number_value("image.percentiles", v) for v in pr)
        if not 0 <= lo < hi <= 100:
            raise RecipeError(f"recipe image.percentiles must rise within 0..100, got {pr!r}")
        d["percentiles"] = (lo, hi)
    if "gamma" in d:
        check_number("image.gamma", d["gamma"], 0.0, math.inf, open_low=True)
    if "plane" in d:
        plane = d["plane"]
        ok = plane == "max" or (isinstance(plane, int) and not isinstance(plane, bool))
        if not ok or (isinstance(plane, int) and plane < 0):
            raise RecipeError(f"recipe image.plane must be a plane number or 'max', got {plane!r}")
    return DisplaySettings(**d)


def _everything(d: Mapping[str, Any]) -> EverythingSettings:
    known_keys("everything", d, {f.name for f in fields(EverythingSettings)})
    gen = mapping("everything.generator", d.get("generator", {}))
    try:
        generator = GeneratorParams.from_kwargs(**gen)
    except SamlibError as exc:
        raise RecipeError(f"recipe everything.generator: {exc}") from None
    rest = {k: v for k, v in d.items() if k != "generator"}
    if rest.get("tiling") is not None:
        rest["tiling"] = construct(
            Tiling, "everything.tiling", mapping("everything.tiling", rest["tiling"])
        )
    return construct(EverythingSettings, "everything", {"generator": generator, **rest})


def _object(i: int, data: Any) -> ObjectPrompts:
    d = dict(mapping(f"objects[{i}]", data))
    known_keys(f"objects[{i}]", d, {f.name for f in fields(ObjectPrompts)})
    try:
        points = tuple((float(p[0]), float(p[1])) for p in d.get("points", []) if len(p) == 2)
        if len(points) != len(d.get("points", [])):
            raise ValueError
        box = d.get("box")
        if box is not None:
            box = tuple(float(v) for v in box)
            if len(box) != 4:
                raise ValueError
        labels = tuple(d.get("labels", []))
    except (TypeError, ValueError):
        raise RecipeError(
            f"recipe objects[{i}]: points must be [[x, y], ...] and box [x0, y0, x1, y1]"
        ) from None
    d.update(points=points, box=box, labels=labels)
    return construct(ObjectPrompts, f"objects[{i}]", d)
