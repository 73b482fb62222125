"""Typed reads of compose values for the converter (ovctl/stack/convert.py): each returns the
value in the type the key needs or raises the loader's error naming file, line and key.

Interpolated values are strings (`replicas: ${N}` is "3"), so numbers and booleans are also
taken from their text, as compose does after interpolating.
"""

from __future__ import annotations

from typing import Any

from ovctl.specs.values import SpecError, parse_duration
from ovctl.stack.load import Loaded

_TRUE = ("true", "yes", "on")
_FALSE = ("false", "no", "off")


def mapping(loaded: Loaded, value: Any, *path: str | int) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise loaded.error(f"expected a mapping, got {_kind(value)}", *path)
    return value


def listing(loaded: Loaded, value: Any, *path: str | int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise loaded.error(f"expected a list, got {_kind(value)}", *path)
    return value


def string(loaded: Loaded, value: Any, *path: str | int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise loaded.error(f"expected a string, got {_kind(value)}", *path)
    return str(value)


def boolean(loaded: Loaded, value: Any, *path: str | int) -> bool:
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if not isinstance(value, bool):
        raise loaded.error(f"expected true or false, got {_kind(value)}", *path)
    return value


def uint(loaded: Loaded, value: Any, *path: str | int) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise loaded.error(f"expected a whole number >= 0, got {value!r}", *path)
    return value


def duration(loaded: Loaded, value: Any, *path: str | int) -> int:
    try:
        return parse_duration(str(value))
    except SpecError as e:
        raise loaded.error(str(e), *path) from None


def labels(loaded: Loaded, value: Any, *path: str | int) -> dict[str, str]:
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            key, _, v = string(loaded, item, *path, i).partition("=")
            out[key] = v
        return out
    return {str(k): "" if v is None else str(v) for k, v in mapping(loaded, value, *path).items()}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)
