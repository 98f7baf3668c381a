"""CUDA rasterization with nvdiffrast (optional; imported only when used).

UNVERIFIED: written without access to a GPU or to nvdiffrast; no test has run it. It follows
nvdiffrast's documented conventions: ``rasterize`` returns ``[B, H, W, 4]`` = (u, v, z/w,
triangle_id + 1) with attribute = u*a0 + v*a1 + (1-u-v)*a2, and its images start at the bottom row
(clip-space y = -1), so every image is flipped vertically to our row-0-top convention and back.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from .cameras import Cameras

_contexts: dict[torch.device, object] = {}


def is_available() -> bool:
    """Whether nvdiffrast can be imported and a CUDA device exists."""
    return importlib.util.find_spec("nvdiffrast") is not None and torch.cuda.is_available()


def _context(device: torch.device) -> object:
    import nvdiffrast.torch as dr

    if device not in _contexts:
        _contexts[device] = dr.RasterizeCudaContext(device=device)
    return _contexts[device]


def clip_positions(vertices: Tensor, cameras: Cameras) -> Tensor:
    """Vertices in OpenGL clip space ``[B, V, 4]`` float32 (projection @ world-to-camera)."""
    cameras = cameras.to(vertices.device)
    mvp = cameras.projection() @ torch.linalg.inv(cameras.c2w.float())
    homogeneous = torch.cat([vertices.float(), torch.ones_like(vertices[:, :1], dtype=torch.float32)], dim=1)
    return torch.einsum("bij,vj->bvi", mvp, homogeneous).contiguous()


def rasterize_nvdiffrast(vertices: Tensor, faces: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor, tuple]:
    """Triangle ids ``[B, H, W]`` (-1 empty), barycentrics ``[B, H, W, 3]`` and (raster, clip) for antialias."""
    import nvdiffrast.torch as dr

    clip = clip_positions(vertices, cameras)
    raster, _ = dr.rasterize(
        _context(vertices.device), clip, faces.int().contiguous(), resolution=(cameras.height, cameras.width)
    )
    flipped = raster.flip(1)  # nvdiffrast row 0 = bottom
    triangle_id = flipped[..., 3].long() - 1
    u, v = flipped[..., 0], flipped[..., 1]
    barycentrics = torch.stack([u, v, 1.0 - u - v], dim=-1) * (triangle_id >= 0).unsqueeze(-1)
    return triangle_id, barycentrics.to(vertices.dtype), (raster, clip)


def antialias_nvdiffrast(image: Tensor, raster_data: tuple[Tensor, Tensor], faces: Tensor) -> Tensor:
    """nvdiffrast's ``antialias`` on a row-0-top image ``[B, H, W, C]``."""
    import nvdiffrast.torch as dr

    raster, clip = raster_data
    bottom_first = image.flip(1).float().contiguous()
    return dr.antialias(bottom_first, raster, clip, faces.int().contiguous()).flip(1).to(image.dtype)
