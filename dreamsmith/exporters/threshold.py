"""Choose the density of a NeRF's exported surface from its own renders.

A fixed density threshold fails both ways: a faint, translucent object (white on white) never
reaches it and exports nothing, while a dense field with haze exports the haze. The surface that
matches what the NeRF shows is the one whose silhouettes agree with its rendered opacity.

For a ray, the thresholded volume ``density > τ`` is hit exactly when the maximum density along the
ray exceeds τ, so one pass over the rays gives every candidate threshold's silhouette at once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.renderers.cameras import Cameras

RAY_MAX_POINT_BYTES = 64
"""Bytes per sample point of ``ray_max_density`` (coordinates, interpolated value, temporaries)."""


def ray_max_density(volume: np.ndarray, bound: float, cameras: Cameras, n_samples: int | None = None,
                    chunk_points: int = 1 << 22) -> Tensor:
    """Per pixel ``[B, H, W]``, the largest trilinearly interpolated density of ``volume`` (sampled on
    [-bound, bound]^3, indexed [x, y, z]) along the pixel's ray through the bounding box; at most
    ``chunk_points`` sample points are held at once (rays in chunks)."""
    resolution = volume.shape[0]
    n_samples = n_samples or 2 * resolution
    origins, directions = cameras.generate_rays()
    batch, height, width = origins.shape[:3]
    distance = cameras.distance.float().view(-1, 1, 1).expand(batch, height, width).reshape(-1, 1, 1)
    origins, directions = origins.reshape(-1, 1, 3), directions.reshape(-1, 1, 3)
    half = bound * 3**0.5
    t = torch.linspace(0.0, 1.0, n_samples, device=origins.device).view(1, -1, 1)
    grid = torch.from_numpy(np.ascontiguousarray(volume)).float().to(origins.device)
    # grid_sample reads [D, H, W] = [z, y, x] with x the last coordinate: permute the [x, y, z] volume.
    grid = grid.permute(2, 1, 0)[None, None]
    rays = max(1, chunk_points // n_samples)
    out = torch.empty(origins.shape[0], device=origins.device)
    for start in range(0, origins.shape[0], rays):
        stop = start + rays
        # the sphere around the box, seen from each camera's distance
        along = distance[start:stop].to(origins.device) - half + 2 * half * t  # [R, S, 1]
        points = origins[start:stop] + directions[start:stop] * along  # [R, S, 3]
        coords = (points / bound).reshape(1, 1, 1, -1, 3)
        values = F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[start:stop] = values.view(-1, n_samples).amax(dim=-1)
    return out.view(batch, height, width)


def opacity_silhouette(opacity: Tensor, faint: float = 0.2, quantile: float = 0.9) -> Tensor:
    """The pixels where rendered ``opacity`` is above half its peak: the peak is the ``quantile`` of
    the pixels above ``faint``. A solid object's peak is 1, so its silhouette is opacity > 0.5 and
    faint haze around it stays out; a uniformly translucent one (white on white) still has one.
    Nothing above ``faint`` gives an empty silhouette."""
    seen = opacity[opacity > faint]
    if seen.numel() == 0:
        return torch.zeros_like(opacity, dtype=torch.bool)
    return opacity > 0.5 * torch.quantile(seen.float(), quantile)


def silhouette_threshold(ray_max: Tensor, target: Tensor, candidates: Tensor) -> tuple[float, float]:
    """The candidate threshold whose silhouettes ``ray_max > τ`` best match the boolean ``target``
    masks (intersection over union over all pixels), and that IoU. Ties go to the higher threshold."""
    masks = ray_max.reshape(1, -1) > candidates.view(-1, 1)
    target = target.reshape(1, -1)
    intersection = (masks & target).sum(dim=1).float()
    union = (masks | target).sum(dim=1).float().clamp_min(1.0)
    iou = intersection / union
    best = int(torch.nonzero(iou == iou.max()).max())
    return float(candidates[best]), float(iou[best])


def candidate_thresholds(volume: np.ndarray, count: int = 48, lowest: float = 0.5) -> Tensor:
    """``count`` log-spaced densities from ``lowest`` to just under the volume's maximum."""
    top = float(volume.max())
    if top <= lowest:
        return torch.tensor([], dtype=torch.float32)
    return torch.logspace(np.log10(lowest), np.log10(top * 0.99), count)
