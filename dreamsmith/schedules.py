"""Values that change over a run: ``[start_step, start_value, end_value, end_step]`` schedules.

One implementation for the whole package: guidance configs (timestep range, gradient clip) read it
here, and the engine reuses it for learning rates, regularizer weights and the rest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from dreamsmith.errors import ConfigError

ScheduleSpec = Annotated[Any, "schedule"]
"""A number, ``None``, or ``[start_step, start_value, end_value, end_step]``. Config fields typed with
it are checked when the config is resolved (:func:`check_schedule`), before any model loads."""


def check_schedule(spec: ScheduleSpec, key: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``spec`` is a valid schedule of finite numbers."""
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    shape_ok = spec is None or (len(items) == 4 if isinstance(spec, (list, tuple)) else True)
    numbers_ok = spec is None or all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items
    )
    if not (shape_ok and numbers_ok) or isinstance(spec, str):
        raise ConfigError(f"'{key}' must be a number or [start_step, start_value, end_value, end_step], all "
                          f"finite, got {spec!r}")
    if isinstance(spec, (list, tuple)) and (spec[0] < 0 or spec[3] < 0):
        raise ConfigError(f"'{key}': the steps of a schedule must be >= 0, got {list(spec)!r}")


def schedule_value(spec: ScheduleSpec, step: int) -> float | None:
    """The value of ``spec`` at ``step``.

    A number (or ``None``) is constant. ``[start_step, start_value, end_value, end_step]`` holds
    ``start_value`` until ``start_step``, moves linearly to ``end_value`` at ``end_step`` and stays
    there (threestudio's ``C()`` with a 4-element list).
    """
    if spec is None or isinstance(spec, (int, float)):
        return spec
    if not isinstance(spec, Sequence) or isinstance(spec, str) or len(spec) != 4:
        raise ConfigError(
            f"a schedule is a number or [start_step, start_value, end_value, end_step], got {spec!r}"
        )
    start_step, start_value, end_value, end_step = (float(v) for v in spec)
    if end_step <= start_step:
        return end_value if step >= end_step else start_value
    fraction = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return start_value + (end_value - start_value) * fraction
