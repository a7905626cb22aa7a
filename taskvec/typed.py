"""Dataclasses to and from JSON-like dicts, checked against their type hints.

Configs (TOML) and results (results.json, stage files) are both dataclass trees. `from_data`
builds one from parsed data and names the first bad key or value in a one-line TaskvecError;
`to_data` is its inverse. A class may define `from_table(data, where)` / `to_table()` when its
file layout is not its field layout (e.g. a table keyed by registered names).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Literal, cast

from .errors import TaskvecError


def _fail(where: str, message: str) -> TaskvecError:
    return TaskvecError(f"{where}: {message}" if where else message)


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """`value` as `annotation` says (nested dataclasses built); ints are accepted as floats."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(annotation):
            raise _fail(where, f"{value!r} is not one of {list(typing.get_args(annotation))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return check_value(value, option, where)
            except TaskvecError as exc:
                errors.append(str(exc))
        raise TaskvecError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, f"expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item = args[0] if args else Any
        items = [check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected a table, got {value!r}")
        args = typing.get_args(annotation)
        item = args[1] if args else Any
        return {k: check_value(v, item, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        # a type hint, so a dataclass itself (is_dataclass also admits instances)
        return from_data(cast(type, annotation), value, where)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except (ValueError, TaskvecError):
            raise _fail(where, f"{value!r} is not one of {[m.value for m in annotation]}") from None
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))):
        raise _fail(where, f"expected {annotation.__name__}, got {value!r}")
    return value


def from_data(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a dict, refusing unknown keys and values of the wrong type.
    Missing keys take the field's default (a missing required field is an error)."""
    if hasattr(cls, "from_table"):
        return cls.from_table(data, where)
    if not isinstance(data, dict):
        raise _fail(where or "file", f"expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise TaskvecError(f"unknown key {name!r}; allowed: {', '.join(sorted(fields))}")
    missing = [
        n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _fail(where or cls.__name__, f"missing key {missing[0]!r}")
    kwargs = {key: check_value(value, hints[key], f"{where}.{key}" if where else key) for key, value in data.items()}
    return cls(**kwargs)


def to_data(obj: Any) -> Any:
    """Plain dicts, lists and scalars (the inverse of `from_data`)."""
    if hasattr(obj, "to_table"):
        return obj.to_table()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj
