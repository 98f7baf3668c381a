"""Config dataclasses from plain dicts (presets, YAML, ``key=value`` overrides), checked by type.

One builder for every config in the package: unknown keys are refused with the nearest valid one,
``Literal`` choices and schedules are checked, numbers are converted, nested dataclasses are built.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from dreamsmith.errors import ConfigError
from dreamsmith.schedules import ScheduleSpec, check_schedule


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` annotation (also inside ``X | None``), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg) + ((None,) if type(None) in typing.get_args(annotation) else ())
    return None


def check_choice(annotation: Any, value: Any, key: str) -> None:
    """Raise a ConfigError naming ``key`` and the choices when ``value`` is not one of them."""
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
            raise ConfigError(f"unknown config key '{path}{key}'{nearest(path + key, valid_keys(cls, path))}")
        kwargs[key] = _convert(hints[key], value, f"{path}{key}")
    return cls(**kwargs)


def _convert(annotation: Any, value: Any, path: str) -> Any:
    check_choice(annotation, value, path)
    if annotation == ScheduleSpec:
        check_schedule(value, path)
        return value
    inner = _dataclass_of(annotation)
    if inner is not None and isinstance(value, dict):
        return build(inner, value, path + ".")
    origin = typing.get_origin(annotation)
    if origin is list and value is not None:
        (item_type,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item_type):
            return [build(item_type, v, f"{path}.{i}.") for i, v in enumerate(value)]
        return list(value)
    if origin is tuple and value is not None:
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"'{path}' must be {annotation.__name__}, got {value!r}")
    return value
