"""CPU rasterization: Open3D ray casting for visibility, PyTorch for everything differentiable.

Open3D's BVH answers "which triangle does this pixel's ray hit first" (a discrete, non-differentiable
decision, made in float32). Given that triangle, the hit is recomputed in PyTorch with the
Moeller-Trumbore ray/triangle intersection, so barycentrics and depth are smooth functions of the
triangle's vertex positions and autograd reaches them (in the vertices' dtype, float64 included).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import DreamsmithError


def cast_rays(vertices: np.ndarray, faces: np.ndarray, rays: np.ndarray) -> np.ndarray:
    """Index of the first triangle hit by each ray ``[N, 6]`` (origin, direction), -1 for a miss.

    vertices: ``[V, 3]``, faces: ``[F, 3]``, rays: ``[N, 6]`` (cast to float32 for Open3D).
    """
    try:
        import open3d as o3d
    except ImportError as error:  # open3d-cpu has wheels for x86_64 only
        raise DreamsmithError(
            "the CPU mesh rasterizer needs Open3D: pip install open3d-cpu (x86_64) or open3d; "
            "on a CUDA machine install nvdiffrast instead (pip install dreamsmith[cuda])"
        ) from error
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
        o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)),
    )
    hits = scene.cast_rays(o3d.core.Tensor(np.ascontiguousarray(rays, dtype=np.float32)))
    triangle_id = hits["primitive_ids"].numpy().astype(np.int64)
    triangle_id[triangle_id == o3d.t.geometry.RaycastingScene.INVALID_ID] = -1
    return triangle_id


def ray_triangle_hit(origins: Tensor, directions: Tensor, v0: Tensor, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
    """Moeller-Trumbore: barycentrics ``[N, 3]`` of (v0, v1, v2) and ray parameter ``t [N]``.

    All inputs ``[N, 3]``; the ray's hit point is ``origins + t * directions``. No inside test: the
    caller already knows the ray hits this triangle (the formulas extend smoothly past its edges).
    """
    edge1, edge2 = v1 - v0, v2 - v0
    p = torch.linalg.cross(directions, edge2, dim=-1)
    det = (edge1 * p).sum(-1)
    det = torch.where(det.abs() < 1e-20, torch.full_like(det, 1e-20), det)  # ray in the plane: no NaN
    s = origins - v0
    q = torch.linalg.cross(s, edge1, dim=-1)
    u = (s * p).sum(-1) / det
    v = (directions * q).sum(-1) / det
    t = (edge2 * q).sum(-1) / det
    return torch.stack([1.0 - u - v, u, v], dim=-1), t


def rasterize_open3d(
    vertices: Tensor, faces: Tensor, origins: Tensor, directions: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Triangle ids ``[B, H, W]``, barycentrics ``[B, H, W, 3]`` and depth ``[B, H, W, 1]``.

    origins, directions: ``[B, H, W, 3]`` rays (unit directions) in the vertices' dtype and device.
    """
    batch_shape = origins.shape[:-1]
    if faces.shape[0] == 0:
        triangle_id = torch.full(batch_shape, -1, dtype=torch.int64, device=vertices.device)
        return triangle_id, origins.new_zeros(*batch_shape, 3), origins.new_zeros(*batch_shape, 1)
    rays = torch.cat([origins, directions], dim=-1).reshape(-1, 6)
    triangle_id = cast_rays(vertices.detach().cpu().numpy(), faces.detach().cpu().numpy(), rays.detach().cpu().numpy())
    triangle_id = torch.from_numpy(triangle_id).to(vertices.device)
    hit = torch.nonzero(triangle_id >= 0).squeeze(1)
    corners = faces[triangle_id[hit]]
    barycentrics_hit, t_hit = ray_triangle_hit(
        rays[hit, :3], rays[hit, 3:], vertices[corners[:, 0]], vertices[corners[:, 1]], vertices[corners[:, 2]]
    )
    n_rays = rays.shape[0]
    barycentrics = rays.new_zeros(n_rays, 3).index_put((hit,), barycentrics_hit)
    depth = rays.new_zeros(n_rays).index_put((hit,), t_hit)
    return triangle_id.reshape(batch_shape), barycentrics.reshape(*batch_shape, 3), depth.reshape(*batch_shape, 1)
