"""Shading: how albedo and normals become colours.

DreamFusion renders each step with one of three modes chosen at random: ``albedo`` (no lighting),
``lambertian`` (albedo x (ambient + diffuse * max(0, n.l))) and ``textureless`` (the same lighting
on a white albedo, which forces geometry to explain the image).
"""

from __future__ import annotations

import torch
from torch import Tensor

SHADING_MODES = ("albedo", "lambertian", "textureless")


def lambertian(albedo: Tensor, normal: Tensor, light_dir: Tensor, ambient: float, diffuse: float) -> Tensor:
    """``albedo * (ambient + diffuse * max(0, n.l))``; ``light_dir`` points from the surface to the light.

    albedo, normal, light_dir: ``[..., 3]`` (broadcastable).
    """
    cos = (normal * light_dir).sum(-1, keepdim=True).clamp(min=0.0)
    return albedo * (ambient + diffuse * cos)


def shade(
    mode: str,
    albedo: Tensor,
    normal: Tensor | None,
    light_dir: Tensor | None,
    ambient: float = 0.4,
    diffuse: float = 0.6,
) -> Tensor:
    """Colour of surface points under one shading mode (see module doc)."""
    if mode == "albedo":
        return albedo
    if normal is None or light_dir is None:
        raise ValueError(f"shading mode {mode!r} needs normals and a light direction")
    if mode == "lambertian":
        return lambertian(albedo, normal, light_dir, ambient, diffuse)
    if mode == "textureless":
        return lambertian(torch.ones_like(albedo), normal, light_dir, ambient, diffuse)
    raise ValueError(f"unknown shading mode {mode!r}; expected one of {SHADING_MODES}")
