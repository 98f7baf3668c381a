"""The optimizer of a stage: Adam with one learning rate (or schedule) per parameter group."""

from __future__ import annotations

import torch

from dreamsmith.engine.part_configs import OptimConfig
from dreamsmith.schedules import schedule_value


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
