"""Checks of the values in a recipe's JSON: each failure is one :class:`RecipeError` line."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from samlib.errors import RecipeError, SamlibError

__all__ = [
    "check_bool",
    "check_int",
    "check_number",
    "construct",
    "known_keys",
    "mapping",
    "number_value",
]


def mapping(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecipeError(f"recipe {name} must be a JSON object, got {type(value).__name__}")
    return value


def known_keys(name: str, d: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise RecipeError(f"recipe {name} has unknown key(s) {unknown}; known: {sorted(allowed)}")


def number_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(f"recipe {name} must be a number, got {value!r}")
    return float(value)


def check_number(name: str, value: Any, low: float, high: float, open_low: bool = False) -> None:
    v = number_value(name, value)
    if not math.isfinite(v) or v < low or v > high or (open_low and v == low):
        where = f"> {low}" if open_low and high == math.inf else f"in [{low}, {high}]"
        raise RecipeError(f"recipe {name} must be a finite number {where}, got {value!r}")


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecipeError(f"recipe {name} must be an integer in [{low}, {high}], got {value!r}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise RecipeError(f"recipe {name} must be true or false, got {value!r}")


def construct(cls, name: str, d: Mapping[str, Any]):
    known_keys(name, d, {f.name for f in fields(cls)})
    try:
        return cls(**d)
    except RecipeError:
        raise
    except (SamlibError, TypeError) as exc:
        raise RecipeError(f"recipe {name}: {exc}") from None
