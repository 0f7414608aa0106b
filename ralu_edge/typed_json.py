"""Frozen dataclasses to and from JSON with type checking, for the bundle manifest: `to_json` turns a
dataclass tree into JSON-ready values, `from_json` rebuilds it from parsed JSON following the type hints
(int, float, str, bool, Any, Literal, Optional/Union, tuple[X, ...], fixed tuples, dict[str, X], nested
dataclasses), so every field is checked before a constructor's own validation runs. Standard library and
ralu_edge.errors only."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Literal, Union

from ralu_edge.errors import UserError


def to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(tp: Any, data: Any, where: str, fail: Callable[[str, str], Exception]) -> Any:
    """A value of annotated type `tp` built from parsed JSON, checking every field's type; on a mismatch
    raises fail(where, problem) (a UserError), `where` being the field's dotted path ("manifest.graphs[2].file")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise fail(where, f"should be an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = from_json(hints[f.name], data[f.name], f"{where}.{f.name}", fail)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise fail(where, f"lacks the field {f.name!r}")
        return tp(**kwargs)
    if origin is Literal:
        if data not in args:
            raise fail(where, f"is {data!r}; expected one of {list(args)}")
        return data
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return from_json(option, data, where, fail)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        if not isinstance(data, list):
            raise fail(where, f"should be a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_json(args[0], v, f"{where}[{i}]", fail) for i, v in enumerate(data))
        if len(data) != len(args):
            raise fail(where, f"should have {len(args)} entries, got {len(data)}")
        return tuple(from_json(a, v, f"{where}[{i}]", fail) for i, (a, v) in enumerate(zip(args, data)))
    if origin is dict:
        if not isinstance(data, dict):
            raise fail(where, f"should be an object, got {type(data).__name__}")
        return {k: from_json(args[1], v, f"{where}.{k}", fail) for k, v in data.items()}
    if tp is Any:
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)) or not math.isfinite(data):
            raise fail(where, f"should be a finite number, got {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise fail(where, f"should be an integer, got {data!r}")
        return data
    if tp in (str, bool):
        if not isinstance(data, tp):
            raise fail(where, f"should be a {tp.__name__}, got {data!r}")
        return data
    raise TypeError(f"unsupported manifest field type {tp!r} at {where}")
