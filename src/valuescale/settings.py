"""Declared settings: one home for every setting of a training run (JAX-free).

A setting is a field of a frozen dataclass (``TrainConfig``'s loop settings, an agent's config
class): its name, its type (``int``, ``float``, ``bool``, ``str``, optionally ``| None``), its
default, its bounds (:func:`setting`) and the docstring under it. Everything else derives from
that one declaration: the value checks (:func:`check_fields`, ``ConfigError`` naming the field),
the engine CLI's flags and help, ``run.json``'s ``config``, and the workflow schema's ``train``
block (:func:`schema_property`, compared with the schema by a drift test).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
from typing import Any


class ConfigError(ValueError):
    """A bad setting; ``field`` names the offending field (the CLI names its flag)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def setting(
    default: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """A dataclass field with its bounds: ``low`` (exclusive with ``low_open``) and ``high``
    (inclusive). The type comes from the annotation, the description from the docstring."""
    return dataclasses.field(
        default=default, metadata={"low": low, "high": high, "low_open": low_open}
    )


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def field_kind(f: dataclasses.Field) -> tuple[str, bool] | None:
    """``(base type name, optional)`` of a field annotated ``T`` or ``T | None`` with T one of
    int, float, bool, str; None for any other annotation (checked by its class itself)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if len(parts) != 1 or parts[0] not in _KINDS:
        return None
    return parts[0], optional


def public_fields(cls: type) -> list[dataclasses.Field]:
    """The dataclass fields of ``cls`` that are settings (not starting with ``_``)."""
    return [f for f in dataclasses.fields(cls) if not f.name.startswith("_")]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bounds_text(f: dataclasses.Field) -> str:
    """``>= 1``, ``> 0 and <= 1`` ...: the field's bounds in words ('' when unbounded)."""
    low, high = f.metadata.get("low"), f.metadata.get("high")
    words = []
    if low is not None:
        words.append(f"{'>' if f.metadata.get('low_open') else '>='} {low:g}")
    if high is not None:
        words.append(f"<= {high:g}")
    return " and ".join(words)


def check_value(f: dataclasses.Field, value: Any) -> None:
    """``ConfigError`` naming ``f`` unless ``value`` has its type and lies within its bounds."""
    kind = field_kind(f)
    if kind is None:
        return
    base, optional = kind
    if optional and value is None:
        return
    low, high = f.metadata.get("low"), f.metadata.get("high")
    low_open = f.metadata.get("low_open", False)
    bounds = bounds_text(f)
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f.name, f"must be a bool, got {value!r}")
        return
    if base == "str":
        if not isinstance(value, str) or not value:
            raise ConfigError(f.name, f"must be a non-empty string, got {value!r}")
        return
    if base == "int":
        ok = _is_int(value)
        what = "an int"
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        what = "a finite number"
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        none = " or None" if optional else ""
        raise ConfigError(
            f.name, f"must be {what}{' ' + bounds if bounds else ''}{none}, got {value!r}"
        )


def check_fields(obj: Any) -> None:
    """Check every typed field of the dataclass instance ``obj`` (in declaration order)."""
    for f in dataclasses.fields(obj):
        check_value(f, getattr(obj, f.name))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, read from its source (whitespace collapsed)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, following in zip(body, body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


_SCHEMA_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def schema_property(f: dataclasses.Field, description: str) -> dict[str, Any]:
    """The JSON-schema property of one setting: type, bounds, default, description."""
    kind = field_kind(f)
    if kind is None:
        raise TypeError(f"setting {f.name}: annotation {f.type!r} has no schema type")
    base, optional = kind
    spec: dict[str, Any] = {
        "type": [_SCHEMA_TYPES[base], "null"] if optional else _SCHEMA_TYPES[base]
    }
    low, high = f.metadata.get("low"), f.metadata.get("high")
    if low is not None:
        spec["exclusiveMinimum" if f.metadata.get("low_open") else "minimum"] = low
    if high is not None:
        spec["maximum"] = high
    spec["default"] = f.default
    spec["description"] = description
    return spec
