"""Regularizers DreamFusion and threestudio add to the guidance loss (pure functions of renders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dreamsmith.guidance.schedules import schedule_value
from dreamsmith.renderers.outputs import RenderOutput


@dataclass
class LossConfig:
    lambda_orient: Any = (0, 10.0, 1000.0, 5000)
    """Orientation loss weight (DreamFusion: visible normals must not face away from the camera);
    a number or [start_step, start_value, end_value, end_step]."""
    lambda_sparsity: Any = 1.0
    """Weight of the opacity sparsity loss mean(sqrt(opacity^2 + 0.01)) (threestudio)."""
    lambda_opaque: Any = 0.0
    """Weight of the binary-entropy loss pushing opacity to 0 or 1 (removes haze)."""


def sparsity_loss(opacity: Tensor) -> Tensor:
    """threestudio's sparsity: mean of sqrt(opacity^2 + 0.01) (a smooth L1 of the opacity)."""
    return (opacity**2 + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor, eps: float = 1e-4) -> Tensor:
    """Binary entropy of the opacity, lowest when every pixel is empty or solid."""
    opacity = opacity.clamp(eps, 1.0 - eps)
    return -(opacity * opacity.log() + (1.0 - opacity) * (1.0 - opacity).log()).mean()


def regularizer_losses(render: RenderOutput, config: LossConfig, step: int) -> dict[str, Tensor]:
    """Weighted regularizers of one render; zero weights cost nothing."""
    losses: dict[str, Tensor] = {}
    weight = schedule_value(config.lambda_orient, step)
    if weight and "orientation" in render.losses:
        losses["orient"] = weight * render.losses["orientation"]
    weight = schedule_value(config.lambda_sparsity, step)
    if weight:
        losses["sparsity"] = weight * sparsity_loss(render.opacity)
    weight = schedule_value(config.lambda_opaque, step)
    if weight:
        losses["opaque"] = weight * opaque_loss(render.opacity)
    return losses


def needs_normals(config: LossConfig, step: int) -> bool:
    """Whether the orientation loss is active (normals must be computed even for albedo renders)."""
    return bool(schedule_value(config.lambda_orient, step))
