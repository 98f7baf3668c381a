"""Renders a triangle mesh (e.g. a DMTet surface) into a ``RenderOutput``, like the volume renderer.

Shading modes: the volume renderer's ``albedo``, ``lambertian`` and ``textureless``, plus ``normal``:
the world-space normal map ``(n + 1) / 2``, which geometry-only SDS stages render (Fantasia3D,
ProlificDreamer stage 2). Colours are composited over the background and anti-aliased at silhouettes
together with opacity and depth, so all three carry gradients to the outline's vertices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dreamsmith.renderers.configs import MeshRendererConfig

from ..representations.mesh_regularizers import face_normals, vertex_normals
from .cameras import Cameras
from .outputs import RenderOutput
from .rasterizer import Fragments, antialias, interpolate, rasterize
from .shading import SHADING_MODES, shade

MESH_SHADING_MODES = (*SHADING_MODES, "normal")

TextureField = Callable[[Tensor], Tensor]
"""Albedo of surface points: ``points [N, 3] -> albedo [N, 3]`` in [0, 1] (e.g. a hash-grid MLP)."""


class MeshRenderer(nn.Module):
    """Rasterizes ``(vertices [V, 3], faces [F, 3])`` for a batch of cameras (no learned state)."""

    def __init__(self, config: MeshRendererConfig | None = None) -> None:
        super().__init__()
        self.config = config or MeshRendererConfig()

    def forward(
        self,
        vertices: Tensor,
        faces: Tensor,
        cameras: Cameras,
        albedo: Tensor | TextureField | None = None,
        shading: str = "albedo",
        light_dir: Tensor | None = None,
        background: Tensor | Callable[[Tensor], Tensor] | None = None,
        uvs: Tensor | None = None,
        uv_faces: Tensor | None = None,
    ) -> RenderOutput:
        """Render the mesh.

        albedo: per-vertex colours ``[V, 3]``, a texture field (``points [N, 3] -> [N, 3]``), or None
        (white); shading: albedo | lambertian | textureless | normal; light_dir: ``[3]`` or ``[B, 3]``
        direction towards a directional light, or None for a headlight (light from the camera);
        background: a colour ``[3]``, a function of unit ray directions ``[..., 3] -> [..., 3]``
        (e.g. a ``Background`` module), or None for ``config.background_color``; uvs: ``[V, 2]``
        texture coordinates, given when the texture field ``albedo`` is a UV texture (``uvs [N, 2] -> [N, 3]``)
        rather than a field of points; uv_faces: ``[F, 3]`` indices into ``uvs`` per corner of each face (default
        ``faces``), for a mesh rasterized welded whose UVs are split at seams (same faces in the same order).
        """
        if shading not in MESH_SHADING_MODES:
            raise ValueError(f"unknown shading mode {shading!r}; expected one of {MESH_SHADING_MODES}")
        config = self.config
        fragments = rasterize(vertices, faces, cameras, backend=config.backend)
        mask = fragments.mask.to(vertices.dtype)
        normal = self._normals(vertices, faces, fragments) * mask

        if shading == "normal":
            color = (normal + 1.0) / 2.0
        else:
            if shading == "textureless" or albedo is None:
                surface_albedo = torch.ones_like(normal)
            elif isinstance(albedo, Tensor):
                surface_albedo = interpolate(albedo.to(vertices.dtype), fragments, faces)
            else:
                where = fragments.points if uvs is None else interpolate(
                    uvs.to(vertices.dtype), fragments, faces if uv_faces is None else uv_faces)
                surface_albedo = self._texture(albedo, fragments, where)
            if light_dir is None:
                light = -fragments.directions
            else:
                light = nn.functional.normalize(light_dir.to(vertices).reshape(-1, 1, 1, 3), dim=-1)
            color = shade(shading, surface_albedo, normal, light, config.ambient, config.diffuse)

        if background is None:
            background = torch.tensor(config.background_color)
        if isinstance(background, Tensor):
            sky = background.to(vertices).expand_as(color)
        else:
            sky = background(fragments.directions.float()).to(vertices)
        rgb = color * mask + sky * (1.0 - mask)
        image = torch.cat([rgb, mask, fragments.depth], dim=-1)
        if config.antialias:
            image = antialias(image, fragments, vertices, faces, cameras)
        return RenderOutput(rgb=image[..., :3], opacity=image[..., 3:4], depth=image[..., 4:5], normal=normal)

    def _normals(self, vertices: Tensor, faces: Tensor, fragments: Fragments) -> Tensor:
        """Unit world-space normals ``[B, H, W, 3]`` at each pixel (arbitrary where empty: the caller masks)."""
        triangle_id = fragments.triangle_id
        if faces.shape[0] == 0:
            return vertices.new_zeros(*triangle_id.shape, 3)
        if self.config.smooth_normals:
            normal = interpolate(vertex_normals(vertices, faces), fragments, faces)
            return nn.functional.normalize(normal, dim=-1, eps=1e-20)
        return face_normals(vertices, faces)[triangle_id.clamp(min=0)]

    @staticmethod
    def _texture(field: TextureField, fragments: Fragments, where: Tensor) -> Tensor:
        """The texture field evaluated at visible pixels' ``where [B, H, W, C]`` (surface points or
        UVs) only, ``[B, H, W, 3]`` (zero elsewhere)."""
        visible = fragments.mask[..., 0]
        albedo = field(where[visible])
        out = albedo.new_zeros(*visible.shape, albedo.shape[-1])
        return out.index_put((visible,), albedo).to(fragments.depth.dtype)
