"""DreamFlow's approximate probability flow (APFO; Lee, Sohn and Shin, ICLR 2024).

What follows the paper (its abstract, project page and reviews; the body was not readable when this was
written, see ``../shared/reference/ALGORITHMS.md``): a predetermined, non-increasing timestep schedule in
place of random t, several asset updates at each time (amortised optimisation), a LoRA-tracked score of
the current scene (VSD's particle score, shared code), and an update like VSD's whose weight is the
change of the noise scale between consecutive scheduled times instead of VSD's w(t).

What is assumed here: with s = σ/α (the probability flow ODE in variance-exploding form,
dx/ds = ε(x)), the render is pulled to x − Δs(ε̂_pretrain − ε_φ), Δs = s(t) − s(t_next) > 0, i.e. the
gradient on z is Δs(ε̂_pretrain − ε_φ), times ``flow_scale``; the times are spaced linearly in t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

from torch import Tensor

from dreamsmith.configs import Range
from dreamsmith.guidance.distillation import DistillationState
from dreamsmith.guidance.math import alpha_sigma
from dreamsmith.guidance.timesteps import (
    ScheduledTimestep,
    TimestepScheduleConfig,
    check_timestep_schedule,
    scheduled_timestep,
)
from dreamsmith.guidance.vsd import VSDConfig, VSDGuidance

DEFAULT_UPDATES_PER_LEVEL = 10
"""K when neither ``updates_per_level`` nor ``schedule_steps`` is given."""


@dataclass
class DreamFlowConfig(VSDConfig, TimestepScheduleConfig):
    """DreamFlow: VSD's particle score on a predetermined, non-increasing timestep schedule."""

    t_start: Annotated[float, Range(0, 1)] = 1.0
    """First time of the schedule, as a fraction of T (DreamFlow's NeRF stage: 1.0)."""
    t_end: Annotated[float, Range(0, 1)] = 0.2
    """Last time reached, as a fraction of T (NeRF stage 0.2; mesh stage 0.5 → 0.1)."""
    levels: Annotated[int, Range(1, 100000)] = 50
    """Number of distinct times between t_start and t_end."""
    updates_per_level: Annotated[int | None, Range(1, 100000)] = None
    """Asset steps at each time (K); null: ``schedule_steps`` spread evenly over the levels (10 without it)."""
    schedule_steps: Annotated[int | None, Range(1, None)] = None
    """Steps the schedule spans (null: set by the engine to the stage's steps)."""
    flow_scale: Annotated[float, Range(0, None)] = 1.0
    """Multiplier of the flow step Δs on the gradient."""


class DreamFlowGuidance(VSDGuidance):
    """APFO: the engine drives t from the schedule; the gradient is Δs(ε̂_pretrain − ε_φ)."""

    config_class = DreamFlowConfig
    timestep_mode = "scheduled"

    @classmethod
    def check_config(cls, config: DreamFlowConfig, path: str = "guidance.") -> None:
        super().check_config(config, path)
        check_timestep_schedule(schedule_of(config), f"{path}t_start/t_end")

    def timestep(self, step: int) -> ScheduledTimestep:
        return scheduled_timestep(schedule_of(self.config), step, self.prior.num_train_timesteps)

    def sample_t(self, batch: int, step: int, generator: Any, timestep: ScheduledTimestep | int | None) -> Tensor:
        """The scheduled t (the engine passes it; a caller that does not gets the schedule's)."""
        return super().sample_t(batch, step, generator, self.timestep(step) if timestep is None else timestep)

    def weight(self, state: DistillationState) -> Tensor:
        """Δs = σ_t/α_t − σ_{t_next}/α_{t_next}, per view, times ``flow_scale``."""
        scheduled = state.scheduled or self.timestep(state.step)
        t_next = (state.t - (scheduled.t - scheduled.t_next)).clamp(min=0)
        alpha, sigma = state.alpha, state.sigma
        alpha_next, sigma_next = alpha_sigma(self.prior.alphas_cumprod, t_next)
        return self.config.flow_scale * (sigma / alpha - sigma_next.to(sigma) / alpha_next.to(alpha))


def schedule_of(config: DreamFlowConfig) -> TimestepScheduleConfig:
    """The config's timestep schedule, K derived from the steps it spans when not given."""
    updates = config.updates_per_level
    if updates is None:
        updates = DEFAULT_UPDATES_PER_LEVEL if config.schedule_steps is None else math.ceil(
            config.schedule_steps / config.levels)
    return TimestepScheduleConfig(t_start=config.t_start, t_end=config.t_end, levels=config.levels,
                                  updates_per_level=updates)
