"""Which diffusion timestep a distillation step uses: random (SDS, VSD, MVDream) or a predetermined,
non-increasing schedule the engine drives (DreamFlow).

A random draw gives one t per group of views (MVDream's 4 views of one object share t); a schedule
maps the optimization step to (t, t_next): ``updates_per_level`` steps at each of ``levels`` times
spaced linearly from ``t_start`` to ``t_end`` (fractions of T), t_next being the following time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.math import sample_timesteps


class ScheduledTimestep(NamedTuple):
    """The engine's timestep for one step and the next scheduled one (integer timesteps)."""

    t: int
    t_next: int


def sample_group_timesteps(
    batch: int,
    views_per_group: int,
    t_min_frac: float,
    t_max_frac: float,
    num_train_timesteps: int,
    generator: torch.Generator,
) -> Tensor:
    """Integer timesteps ``[batch]``, one uniform draw per group of ``views_per_group`` consecutive views.

    With one view per group this is exactly :func:`sample_timesteps` (same draws from ``generator``).
    """
    if batch % views_per_group:
        raise ValueError(f"a batch of {batch} views is not made of groups of {views_per_group}")
    draws = sample_timesteps(batch // views_per_group, t_min_frac, t_max_frac, num_train_timesteps, generator)
    return draws if views_per_group == 1 else draws.repeat_interleave(views_per_group)


@dataclass
class TimestepScheduleConfig:
    """A predetermined, non-increasing timestep schedule (DreamFlow, Lee et al. 2024, Sec. 3)."""

    t_start: float = 0.98
    """First time, as a fraction of T."""
    t_end: float = 0.02
    """Last time reached, as a fraction of T (not above ``t_start``)."""
    levels: int = 50
    """Number of distinct times between ``t_start`` and ``t_end``."""
    updates_per_level: int = 10
    """Optimization steps spent at each time (K)."""


def check_timestep_schedule(config: TimestepScheduleConfig, key: str) -> None:
    """Raise a ConfigError naming ``key`` unless the schedule is well formed and non-increasing."""
    if not (0.0 <= config.t_end <= 1.0 and 0.0 <= config.t_start <= 1.0):
        raise ConfigError(f"'{key}': t_start and t_end are fractions of T in [0, 1], got "
                          f"{config.t_start} and {config.t_end}")
    if config.t_end > config.t_start:
        raise ConfigError(f"'{key}': the timestep schedule must not increase (t_start {config.t_start} < "
                          f"t_end {config.t_end})")
    if config.levels < 1 or config.updates_per_level < 1:
        raise ConfigError(f"'{key}': levels and updates_per_level must be >= 1")


def scheduled_timestep(config: TimestepScheduleConfig, step: int, num_train_timesteps: int) -> ScheduledTimestep:
    """(t, t_next) of optimization ``step``: level ``step // updates_per_level`` (held at the last level
    after the schedule ends) of ``levels + 1`` times spaced linearly from t_start to t_end."""
    level = min(step // config.updates_per_level, config.levels - 1)
    top = num_train_timesteps - 1

    def time_of(index: int) -> int:
        fraction = config.t_start + (config.t_end - config.t_start) * index / config.levels
        return min(top, max(0, round(fraction * num_train_timesteps)))

    return ScheduledTimestep(time_of(level), time_of(level + 1))


def ddim_timesteps(t_start: int, steps: int) -> list[int]:
    """The DDIM times of a denoising from about ``t_start`` (Instruct-NeRF2NeRF's edit, Haque et al. 2023): DDIM's
    "leading" spacing over the first ``t_start`` training times, what diffusers' DDIMScheduler gives with
    ``num_train_timesteps = t_start``: step r = ⌊t_start/steps⌋ (at least 1), times (n − 1)r, …, r, 0 with
    n = min(steps, t_start + 1); after the last comes the clean image."""
    if t_start < 0 or steps < 1:
        raise ValueError(f"a DDIM denoising needs t_start >= 0 and steps >= 1, got {t_start} and {steps}")
    ratio = max(1, t_start // steps)
    count = min(steps, t_start // ratio + 1)
    return [k * ratio for k in reversed(range(count))]
