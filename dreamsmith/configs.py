"""Config dataclasses from plain dicts (presets, YAML, ``key=value`` overrides), checked by type.

One builder for every config in the package: unknown keys are refused with the nearest valid one,
``Literal`` choices and schedules are checked, numbers are converted, nested dataclasses are built.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal

from dreamsmith.errors import ConfigError
from dreamsmith.schedules import check_schedule


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if not (isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union):
        return None  # e.g. list[Literal[...]]: its items are checked one by one (check_choice)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg) + ((None,) if type(None) in typing.get_args(annotation) else ())
    return None


def check_choice(annotation: Any, value: Any, key: str) -> None:
    """Raise a ConfigError naming ``key`` and the choices when ``value`` (or an item of a ``list[Literal]``) is not
    one of them."""
    if typing.get_origin(annotation) is list and isinstance(value, list):
        for item in value:
            check_choice(typing.get_args(annotation)[0], item, key)
        return
    choices = literal_choices(annotation)
    if choices is not None and value not in choices:
        names = ", ".join(str(c) for c in choices)
        what = key.rsplit(".", 1)[-1].replace("_", " ")
        raise ConfigError(f"unknown {what} {value!r} in '{key}'; choose one of {names}")


def check_choices(config: Any, path: str = "") -> None:
    """Check every choice field of dataclass instance ``config`` (not nested ones)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        check_choice(hints[field.name], getattr(config, field.name), f"{path}{field.name}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass inside ``X`` or ``X | None``, if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def nearest(key: str, candidates: list[str]) -> str:
    """A ``; did you mean ...?`` hint for a misspelt key ('' when nothing is close)."""
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not match:
        last = key.rsplit(".", 1)[-1]
        match = [c for c in candidates if c.rsplit(".", 1)[-1] == last][:1]
    return f"; did you mean '{match[0]}'?" if match else ""


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass accepts (nested dataclasses expanded)."""
    keys = []
    for name, annotation in _field_types(cls).items():
        keys.append(prefix + name)
        inner = _dataclass_of(annotation)
        if inner is not None:
            keys += valid_keys(inner, f"{prefix}{name}.")
    return keys


def build(cls: type, values: dict[str, Any], path: str = "", extra_keys: typing.Callable | None = None) -> Any:
    """Instantiate dataclass ``cls`` from a plain dict, refusing unknown keys by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{path.rstrip('.') or 'config'}' must be a mapping, got {values!r}")
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key {path + key!r}{nearest(path + key, valid_keys(cls, path))}")
        kwargs[key] = _convert(hints[key], value, f"{path}{key}")
    return cls(**kwargs)


def _convert(annotation: Any, value: Any, path: str) -> Any:
    annotation, limits = unannotate(annotation)
    if "schedule" in limits:
        check_schedule(value, path)
        for number in _schedule_values(value):
            _check_limits(limits, number, path)
        return value
    check_choice(annotation, value, path)
    annotation, optional = _optional(annotation)
    if value is None and optional:
        return None
    inner = _dataclass_of(annotation)
    if inner is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping of its settings, got {value!r}")
        return build(inner, value, path + ".")
    origin = typing.get_origin(annotation)
    if origin is list and value is not None:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        if dataclasses.is_dataclass(item_type):
            return [build(item_type, v, f"{path}.{i}.") for i, v in enumerate(value)]
        return [_convert(item_type, v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is tuple and value is not None:
        return _tuple(annotation, value, path, limits)
    if annotation in (int, float):
        value = _number(annotation, value, path)
        _check_limits(limits, value, path)
        return value
    if annotation in (str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"'{path}' must be {annotation.__name__}, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Range:
    """Annotated metadata: the inclusive range a number (or each item of a tuple) must lie in."""

    low: float | None = None
    high: float | None = None


def unannotate(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[X, *metadata]`` -> ``(X, metadata)``; anything else -> ``(annotation, ())``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return annotation.__origin__, annotation.__metadata__
    return annotation, ()


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(annotation)):
            return args[0], True
    return annotation, False


def _number(kind: type, value: Any, path: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"'{path}' must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"'{path}' must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"'{path}' must be a finite number, got {value!r}")
    return float(value) if kind is float else value


def _check_limits(limits: tuple[Any, ...], value: Any, path: str) -> None:
    for limit in limits:
        if not isinstance(limit, Range) or value is None:
            continue
        if (limit.low is not None and value < limit.low) or (limit.high is not None and value > limit.high):
            low = "-inf" if limit.low is None else f"{limit.low:g}"
            high = "inf" if limit.high is None else f"{limit.high:g}"
            raise ConfigError(f"'{path}' must be between {low} and {high}, got {value!r}")


def _schedule_values(spec: Any) -> list[float]:
    """The values (not the steps) a schedule takes."""
    if isinstance(spec, (list, tuple)):
        return [spec[1], spec[2]]
    return [] if spec is None else [spec]


def _tuple(annotation: Any, value: Any, path: str, limits: tuple[Any, ...]) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"'{path}' must be a list, got {value!r}")
    args = typing.get_args(annotation)
    items = list(args[:1]) * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
    if len(items) != len(value):
        raise ConfigError(f"'{path}' must have {len(items)} values, got {list(value)!r}")
    converted = tuple(_convert(kind, item, f"{path}.{i}") for i, (kind, item) in enumerate(zip(items, value,
                                                                                              strict=True)))
    for item in converted:
        _check_limits(limits, item, path)
    if path.endswith("_range") and len(converted) == 2 and converted[0] > converted[1]:
        raise ConfigError(f"'{path}' is [low, high] with low <= high, got {list(value)!r}")
    return converted
