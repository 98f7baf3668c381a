"""The optimizer of a stage: Adam with one learning rate (or schedule) per parameter group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from dreamsmith.configs import Range
from dreamsmith.schedules import ScheduleSpec, schedule_value


@dataclass
class OptimConfig:
    lr_encoding: Annotated[ScheduleSpec, Range(0, None)] = 0.01
    """Learning rate of the hash-grid tables (number or schedule); in a dmtet stage, the texture field's."""
    lr_mlp: Annotated[ScheduleSpec, Range(0, None)] = 0.001
    """Learning rate of the density and albedo MLPs; in a dmtet stage, the texture field's albedo MLP."""
    lr_geometry: Annotated[ScheduleSpec, Range(0, None)] = 0.01
    """Learning rate of a DMTet's SDF (metre-like values) and vertex deformation (dmtet stages)."""
    lr_background: Annotated[ScheduleSpec, Range(0, None)] = 0.001
    """Learning rate of a learned background."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: Annotated[float, Range(0, 1)] = 1e-15
    """Adam epsilon (tiny: hash-grid entries get rare, small gradients)."""


def make_optimizer(groups: dict[str, list[torch.nn.Parameter]], config: OptimConfig) -> torch.optim.Adam:
    """Adam over named parameter groups; each group's lr comes from ``lr_<name>``."""
    param_groups = [
        {"params": params, "name": name, "lr": schedule_value(getattr(config, f"lr_{name}"), 0)}
        for name, params in groups.items()
        if params
    ]
    return torch.optim.Adam(param_groups, betas=tuple(config.betas), eps=config.eps, fused=True)


def update_learning_rates(optimizer: torch.optim.Optimizer, config: OptimConfig, step: int) -> None:
    """Set each group's lr to its schedule's value at ``step`` (groups a guidance owns keep theirs)."""
    for group in optimizer.param_groups:
        if not hasattr(config, f"lr_{group['name']}"):
            continue
        group["lr"] = schedule_value(getattr(config, f"lr_{group['name']}"), step)
