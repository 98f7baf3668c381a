"""Values that change over a run: ``[start_step, start_value, end_value, end_step]`` schedules.

One implementation for the whole package: guidance configs (timestep range, gradient clip) read it
here, and the engine reuses it for learning rates, regularizer weights and the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from dreamsmith.errors import ConfigError

ScheduleSpec = Annotated[Any, "schedule"]
"""A number, ``None``, or ``[start_step, start_value, end_value, end_step]``. Config fields typed with
it are checked when the config is resolved (:func:`check_schedule`), before any model loads."""


def check_schedule(spec: ScheduleSpec, key: str) -> None:
    """Raise a ConfigError naming ``key`` unless ``spec`` is a valid schedule."""
    try:
        value = schedule_value(spec, 0)
    except (ConfigError, TypeError, ValueError):
        value = spec
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"'{key}' must be a number or [start_step, start_value, end_value, end_step], got {spec!r}")


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
