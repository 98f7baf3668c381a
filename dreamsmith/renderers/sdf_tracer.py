"""Sphere tracing of analytic signed distance functions (the toyworld's ground-truth renderer).

Hart, "Sphere tracing: a geometric method for the antialiased ray tracing of implicit surfaces"
(1996): step along each ray by the SDF value, which never overshoots an exact (1-Lipschitz) SDF.
Rays start where they enter a bounding sphere, so the empty corners of the image cost nothing;
only rays still marching are evaluated each iteration. A final secant step between the last two
samples makes the hit exact to well below a pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.renderers.shading import shade

SdfFn = Callable[[Tensor], Tensor]


def bounding_sphere_interval(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Where unit rays enter and leave a sphere at the origin.

    origins, dirs: ``[N, 3]``. Returns t_enter ``[N]`` (clamped at 0), t_exit ``[N]`` and a hit mask ``[N]``.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp(min=0.0).sqrt()
    return (-b - root).clamp(min=0.0), -b + root, hit & (-b + root > 0)


def sphere_trace(
    sdf: SdfFn,
    origins: Tensor,
    dirs: Tensor,
    bound_radius: float = 0.6,
    max_steps: int = 128,
    hit_eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """Ray distance to the first zero of ``sdf`` along each ray.

    sdf: points ``[M, 3]`` -> ``[M]``; origins, dirs: ``[N, 3]`` (dirs unit length).
    Returns t ``[N]`` and a hit mask ``[N]`` (t is meaningless where there is no hit).
    """
    t_enter, t_exit, inside_bound = bounding_sphere_interval(origins, dirs, bound_radius)
    t = t_enter.clone()
    hit = torch.zeros_like(inside_bound)
    # the last two samples of each ray, for the closing secant step
    last_t, last_d = t.clone(), torch.full_like(t, float("inf"))
    prev_t, prev_d = t.clone(), torch.full_like(t, float("inf"))
    active = inside_bound.nonzero().squeeze(-1)
    for _ in range(max_steps):
        if active.numel() == 0:
            break
        ta = t[active]
        d = sdf(origins[active] + ta[:, None] * dirs[active])
        prev_t[active], prev_d[active] = last_t[active], last_d[active]
        last_t[active], last_d[active] = ta, d
        converged = d.abs() < hit_eps
        hit[active[converged]] = True
        t[active] = ta + d
        active = active[~(converged | (ta > t_exit[active]))]
    # a ray that ran out of steps close to the surface (grazing) still counts as a hit
    hit[active] = last_d[active].abs() < 1e-3
    # secant step through the last two samples (the exact SDF is locally linear along the ray)
    slope = (last_d - prev_d) / (last_t - prev_t)
    usable = torch.isfinite(slope) & (slope.abs() > 1e-3)
    refined = last_t - last_d / torch.where(usable, slope, torch.ones_like(slope))
    close = usable & ((refined - last_t).abs() < 1e-2)
    t = torch.where(hit & close, refined, last_t)
    return t, hit


def sdf_normals(sdf: SdfFn, points: Tensor, eps: float = 1e-4) -> Tensor:
    """Unit normals ``[N, 3]`` from central differences of the SDF at ``points [N, 3]``."""
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    probes = torch.cat([points[:, None, :] + offsets, points[:, None, :] - offsets], dim=1)  # [N, 6, 3]
    values = sdf(probes.reshape(-1, 3)).reshape(-1, 6)
    return torch.nn.functional.normalize(values[:, :3] - values[:, 3:], dim=-1)


def render_sdf(
    sdf: SdfFn,
    cameras: Cameras,
    albedo: Tensor,
    ambient: float = 0.4,
    diffuse: float = 0.6,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    bound_radius: float = 0.6,
    max_steps: int = 128,
) -> RenderOutput:
    """Render one solid-coloured SDF surface from a batch of cameras, lit by a headlight.

    sdf: points ``[N, 3]`` -> ``[N]`` (exact or at least 1-Lipschitz, negative inside);
    albedo: ``[3]`` or ``[B, 3]``; ``bound_radius``: a sphere at the origin holding the surface.
    Returns rgb ``[B, H, W, 3]``, opacity ``[B, H, W, 1]`` in {0, 1}, depth ``[B, H, W, 1]``
    (distance along the ray, 0 where empty) and world normals ``[B, H, W, 3]`` (0 where empty).
    """
    origins, dirs = cameras.generate_rays()
    batch, height, width, _ = dirs.shape
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    with torch.no_grad():
        t, hit = sphere_trace(sdf, origins, dirs, bound_radius, max_steps)
        idx = hit.nonzero().squeeze(-1)
        points = origins[idx] + t[idx, None] * dirs[idx]
        normal = torch.zeros_like(dirs)
        normal[idx] = sdf_normals(sdf, points)
    per_ray_albedo = albedo.to(dirs).reshape(-1, 1, 3).expand(batch, height * width, 3).reshape(-1, 3)
    rgb = torch.tensor(background, dtype=dirs.dtype, device=dirs.device).expand(dirs.shape[0], 3).clone()
    # headlight: the light sits at the camera, so l = -ray direction
    rgb[idx] = shade("lambertian", per_ray_albedo[idx], normal[idx], -dirs[idx], ambient, diffuse)
    opacity = hit.to(dirs.dtype)[:, None]
    depth = torch.where(hit, t, torch.zeros_like(t))[:, None]
    return RenderOutput(
        rgb=rgb.reshape(batch, height, width, 3),
        opacity=opacity.reshape(batch, height, width, 1),
        depth=depth.reshape(batch, height, width, 1),
        normal=normal.reshape(batch, height, width, 3),
    )
