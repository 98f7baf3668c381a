"""Differentiable mesh rasterization: one interface, two backends.

- ``"open3d"`` (CPU, always available): Open3D ray casting decides which triangle each pixel sees;
  barycentrics and depth are then recomputed in PyTorch from that triangle's vertices, so gradients
  reach vertex positions (see ``raster_cpu``). Silhouettes are anti-aliased by
  ``raster_antialias.edge_antialias``.
- ``"nvdiffrast"`` (CUDA): nvdiffrast's rasterize/antialias, used when it is importable and the
  vertices are on a CUDA device (see ``raster_cuda``; unverified until run on a GPU).

Images follow the renderer convention: ``[B, H, W, C]``, row 0 at the top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import DreamsmithError
from . import raster_cuda
from .cameras import Cameras
from .raster_antialias import edge_antialias
from .raster_cpu import rasterize_open3d

BACKENDS = ("auto", "open3d", "nvdiffrast")


@dataclass
class Fragments:
    """What each pixel sees.

    triangle_id: ``[B, H, W]`` int64, -1 where the ray hits nothing; barycentrics: ``[B, H, W, 3]``
    weights of the triangle's vertices (zero where empty; differentiable w.r.t. vertex positions);
    depth: ``[B, H, W, 1]`` distance along the unit ray (zero where empty; differentiable);
    origins, directions: ``[B, H, W, 3]`` the pixel rays (unit directions); backend: the one used;
    raster_data: backend-private data its antialias needs (nvdiffrast's raster output and clip
    positions), or None.
    """

    triangle_id: Tensor
    barycentrics: Tensor
    depth: Tensor
    origins: Tensor
    directions: Tensor
    backend: str
    raster_data: tuple[Tensor, Tensor] | None = None

    @property
    def mask(self) -> Tensor:
        """``[B, H, W, 1]`` bool: the pixel sees a triangle."""
        return (self.triangle_id >= 0).unsqueeze(-1)

    @property
    def points(self) -> Tensor:
        """World-space surface points ``[B, H, W, 3]`` (the ray origin where empty)."""
        return self.origins + self.depth * self.directions


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``rasterize`` will use for tensors on ``device`` ("auto" picks nvdiffrast on CUDA)."""
    if backend not in BACKENDS:
        raise DreamsmithError(f"unknown rasterizer backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        return "nvdiffrast" if device.type == "cuda" and raster_cuda.is_available() else "open3d"
    if backend == "nvdiffrast" and not (device.type == "cuda" and raster_cuda.is_available()):
        raise DreamsmithError(
            "the nvdiffrast rasterizer needs nvdiffrast installed (pip install dreamsmith[cuda]) and the "
            "mesh on a CUDA device; use backend='open3d' (CPU ray casting) or 'auto'"
        )
    return backend


def rasterize(vertices: Tensor, faces: Tensor, cameras: Cameras, backend: str = "auto") -> Fragments:
    """Rasterize one mesh seen by a batch of cameras.

    vertices: ``[V, 3]`` world positions (may require grad); faces: ``[F, 3]`` int64.
    """
    backend = resolve_backend(backend, vertices.device)
    origins, directions = cameras.to(vertices.device).generate_rays()
    origins, directions = origins.to(vertices.dtype), directions.to(vertices.dtype)
    if backend == "nvdiffrast":
        triangle_id, barycentrics, raster_data = raster_cuda.rasterize_nvdiffrast(vertices, faces, cameras)
        points = interpolate_barycentric(vertices, triangle_id, barycentrics, faces)
        depth = ((points - origins) * directions).sum(-1, keepdim=True) * (triangle_id >= 0).unsqueeze(-1)
        return Fragments(triangle_id, barycentrics, depth, origins, directions, backend, raster_data)
    triangle_id, barycentrics, depth = rasterize_open3d(vertices, faces, origins, directions)
    return Fragments(triangle_id, barycentrics, depth, origins, directions, backend)


def interpolate_barycentric(attributes: Tensor, triangle_id: Tensor, barycentrics: Tensor, faces: Tensor) -> Tensor:
    """Per-pixel ``sum_k barycentrics_k * attributes[faces[triangle_id, k]]`` ``[B, H, W, C]`` (0 where empty)."""
    flat_id = triangle_id.reshape(-1)
    hit = torch.nonzero(flat_id >= 0).squeeze(1)  # only covered pixels: about half the work
    corner_values = attributes[faces[flat_id[hit]]]  # [N, 3, C]
    weights = barycentrics.reshape(-1, 3)[hit].to(attributes.dtype)
    values = torch.einsum("nk,nkc->nc", weights, corner_values)
    out = attributes.new_zeros(flat_id.shape[0], attributes.shape[-1]).index_put((hit,), values)
    return out.reshape(*triangle_id.shape, attributes.shape[-1])


def interpolate(attributes: Tensor, fragments: Fragments, faces: Tensor) -> Tensor:
    """Per-vertex attributes ``[V, C]`` interpolated at every pixel ``[B, H, W, C]`` (zero where empty)."""
    return interpolate_barycentric(attributes, fragments.triangle_id, fragments.barycentrics, faces)


def antialias(image: Tensor, fragments: Fragments, vertices: Tensor, faces: Tensor, cameras: Cameras) -> Tensor:
    """Blend ``image [B, H, W, C]`` across silhouette edges so gradients reach the outline's vertices.

    Must be given the vertices and faces that produced ``fragments``.
    """
    if fragments.backend == "nvdiffrast":
        return raster_cuda.antialias_nvdiffrast(image, fragments.raster_data, faces)
    return edge_antialias(image, fragments.triangle_id, fragments.depth, vertices, faces, cameras)
