"""The texture-source interface: renders of the asset in, edited images and a confidence per pixel out.

A texture source sees the asset the way a 2D image model would (its albedo colour, depth, normals, the
region it may change and, for people, a pose map) from a batch of cameras, and answers with images of the
same views and a confidence ``[B, H, W]`` in [0, 1]: 0 where it has no opinion (the asset keeps its colour
there), 1 where its image should become the texture. :mod:`dreamsmith.tryon.projection` bakes the answer
into the UV texture; every source (the embedded decal, the try-on models) only implements ``edit``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from dreamsmith.regions import Region
from dreamsmith.renderers.cameras import Cameras, look_at_c2w, spherical_to_position
from dreamsmith.renderers.configs import MeshRendererConfig
from dreamsmith.renderers.mesh_renderer import MeshRenderer
from dreamsmith.representations.mesh import Mesh

VIEW_ELEVATIONS = (-35.0, 0.0, 35.0)
"""Rings of cameras around the asset (degrees), plus one from above and one from below."""
VIEW_AZIMUTHS = 8
POLE_ELEVATION = 85.0


@dataclass
class ViewBatch:
    """Renders of the asset for a source, ``B`` views of ``H x W``.

    rgb: albedo colour ``[B, H, W, 3]`` (unlit, so it is the texture as seen); depth: ``[B, H, W, 1]``
    distance along each unit ray (0 where empty); normal: world normals ``[B, H, W, 3]``; opacity:
    ``[B, H, W, 1]`` 1 on the asset; region: ``[B, R, H, W]`` 1 where the pixel's surface lies in region r;
    pose: an optional pose map ``[B, C, H, W]`` rendered from the mesh's labelling; cameras: the views.
    """

    rgb: Tensor
    depth: Tensor
    normal: Tensor
    opacity: Tensor
    region: Tensor
    cameras: Cameras
    pose: Tensor | None = None

    @property
    def points(self) -> Tensor:
        """The surface point each pixel sees ``[B, H, W, 3]`` (the ray origin where empty)."""
        origins, directions = self.cameras.generate_rays()
        return origins.to(self.depth) + directions.to(self.depth) * self.depth


@dataclass
class SourceResult:
    """A source's answer: ``images [B, H, W, 3]`` in [0, 1] and ``confidence [B, H, W]`` in [0, 1]."""

    images: Tensor
    confidence: Tensor


class TextureSource(Protocol):
    """Edits renders of an asset (see the module doc)."""

    name: str

    def edit(self, views: ViewBatch) -> SourceResult:
        """Edited images of ``views`` and the confidence in each pixel."""


def view_cameras(mesh: Mesh, resolution: int, fovy_deg: float = 40.0, margin: float = 1.15) -> Cameras:
    """Rings of cameras (``VIEW_ELEVATIONS`` x ``VIEW_AZIMUTHS``, and the two poles) looking at the centre of
    ``mesh``'s bounding box from far enough that its bounding sphere fills the frame with ``margin``."""
    low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    centre = torch.from_numpy(((low + high) / 2).astype(np.float32))
    radius = float(np.linalg.norm(high - low)) / 2 * margin
    distance = radius / math.sin(math.radians(fovy_deg) / 2)
    azimuth = torch.arange(VIEW_AZIMUTHS, dtype=torch.float32) * (360.0 / VIEW_AZIMUTHS)
    rings = [(azimuth + 22.5 * (index % 2), torch.full_like(azimuth, elevation))
             for index, elevation in enumerate(VIEW_ELEVATIONS)]
    azimuth = torch.cat([a for a, _ in rings] + [torch.zeros(2)])
    elevation = torch.cat([e for _, e in rings] + [torch.tensor([POLE_ELEVATION, -POLE_ELEVATION])])
    distance_t = torch.full_like(azimuth, distance)
    position = spherical_to_position(azimuth, elevation, distance_t) + centre
    return Cameras(look_at_c2w(position, centre.expand_as(position)), torch.full_like(azimuth, fovy_deg), azimuth,
                   elevation, distance_t, resolution, resolution)


@torch.no_grad()
def render_views(vertices: Tensor, faces: Tensor, uvs: Tensor, texture: Tensor, cameras: Cameras,
                 regions: list[Region]) -> ViewBatch:
    """Albedo renders (no antialiasing: each pixel is one surface point) of the textured mesh for a source.

    texture: a ``UVTexture`` or any ``uvs [N, 2] -> [N, 3]`` lookup."""
    from dreamsmith.guidance.regional import region_masks

    renderer = MeshRenderer(MeshRendererConfig(antialias=False, background_color=(1.0, 1.0, 1.0)))
    render = renderer(vertices, faces, cameras, albedo=texture, shading="albedo", uvs=uvs)
    device = render.rgb.device
    masks = (region_masks(render, cameras, regions) if regions
             else render.opacity.new_zeros(len(cameras), 0, cameras.height, cameras.width))
    return ViewBatch(render.rgb, render.depth, render.normal, render.opacity, masks.to(device), cameras.to(device))
