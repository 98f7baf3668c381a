"""Regularizers DreamFusion and threestudio add to the guidance loss (pure functions of renders)."""

from __future__ import annotations

import torch
from torch import Tensor

from dreamsmith.engine.part_configs import LossConfig
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.representations.mesh_regularizers import laplacian_smoothness, normal_consistency
from dreamsmith.schedules import schedule_value


def sparsity_loss(opacity: Tensor) -> Tensor:
    """threestudio's sparsity: mean of sqrt(opacity^2 + 0.01) (a smooth L1 of the opacity)."""
    return (opacity**2 + 0.01).sqrt().mean()


def opaque_loss(opacity: Tensor, eps: float = 1e-4) -> Tensor:
    """Binary entropy of the opacity, lowest when every pixel is empty or solid."""
    opacity = opacity.clamp(eps, 1.0 - eps)
    return -(opacity * opacity.log() + (1.0 - opacity) * (1.0 - opacity).log()).mean()


def normal_smoothness_loss(normal: Tensor, opacity: Tensor) -> Tensor:
    """Mean (1 - cos) between the rendered normals ``[B, H, W, 3]`` of horizontally and vertically
    neighbouring pixels, each pair weighted by the product of their opacities ``[B, H, W, 1]`` (detached:
    the loss shapes the surface, not the silhouette); a scalar, 0 for a flat surface."""
    weight = opacity.detach()[..., 0]
    total = normal.new_zeros(())
    mass = normal.new_zeros(())
    for dim in (1, 2):
        n = normal.size(dim) - 1
        cos = (normal.narrow(dim, 0, n) * normal.narrow(dim, 1, n)).sum(-1)
        pair = weight.narrow(dim, 0, n) * weight.narrow(dim, 1, n)
        total = total + (pair * (1.0 - cos)).sum()
        mass = mass + pair.sum()
    return total / mass.clamp(min=1e-6)


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
    weight = schedule_value(config.lambda_normal_smoothness, step)
    if weight and render.normal is not None:
        losses["normal_smoothness"] = weight * normal_smoothness_loss(render.normal, render.opacity)
    return losses


def sdf_sign_loss(sdf: Tensor, edges: Tensor) -> Tensor:
    """nvdiffrec's SDF regularizer (Munkberg et al. 2022, Sec. 3), a scalar.

    Over grid edges ``[E, 2]`` whose ends' SDF ``[N]`` differ in sign, the mean binary cross-entropy
    between the sigmoid of each end's SDF and the other end's sign. A surface no render sees (a bubble
    inside the shape) gets no other gradient, so this alone removes it.
    """
    ends = sdf[edges]
    crossing = (ends[:, 0] > 0) != (ends[:, 1] > 0)
    if not bool(crossing.any()):
        return sdf.new_zeros(())
    ends = ends[crossing]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return bce(ends[:, 0], (ends[:, 1] > 0).to(sdf)) + bce(ends[:, 1], (ends[:, 0] > 0).to(sdf))


def dmtet_regularizer_losses(
    vertices: Tensor, faces: Tensor, sdf: Tensor, edges: Tensor, config: LossConfig, step: int
) -> dict[str, Tensor]:
    """Weighted regularizers of a DMTet: its surface (``vertices [V, 3]``, ``faces [F, 3]``) and its grid's
    SDF ``[N]`` on edges ``[E, 2]``; zero weights cost nothing."""
    losses: dict[str, Tensor] = {}
    weight = schedule_value(config.lambda_sdf_sign, step)
    if weight:
        losses["sdf_sign"] = weight * sdf_sign_loss(sdf, edges)
    weight = schedule_value(config.lambda_normal_consistency, step)
    if weight:
        losses["normal_consistency"] = weight * normal_consistency(vertices, faces)
    weight = schedule_value(config.lambda_laplacian, step)
    if weight:
        losses["laplacian"] = weight * laplacian_smoothness(vertices, faces)
    return losses


def needs_normals(config: LossConfig, step: int) -> bool:
    """Whether the orientation or normal-smoothness loss is active (normals must be computed even for
    albedo renders)."""
    return bool(schedule_value(config.lambda_orient, step) or schedule_value(config.lambda_normal_smoothness, step))
