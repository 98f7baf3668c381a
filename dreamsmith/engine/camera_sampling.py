"""Random training cameras and fixed evaluation cameras.

Default ranges are threestudio's DreamFusion ones (elevation [-10, 90] deg, distance [1.5, 2.0],
vertical field of view [40, 70] deg, azimuth all around). MVDream-style guidance asks for groups of
views that share elevation, distance and field of view and are 360/k deg apart in azimuth.
"""

from __future__ import annotations

import torch

from dreamsmith.engine.part_configs import CameraConfig
from dreamsmith.renderers.cameras import Cameras, orbit_cameras


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=generator.device).cpu()


def sample_cameras(config: CameraConfig, generator: torch.Generator, views_per_group: int = 1) -> Cameras:
    """A random batch of ``config.batch_size`` cameras.

    Elevation is drawn uniformly in degrees (as threestudio does); with ``views_per_group`` k > 1 the
    batch is made of groups of k views sharing elevation, distance and fov, their azimuths a random
    start plus 360/k deg steps (MVDream).
    """
    if config.batch_size % views_per_group:
        raise ValueError(f"camera batch_size {config.batch_size} is not a multiple of {views_per_group} views")
    groups = config.batch_size // views_per_group
    elevation = _uniform(*config.elevation_range, groups, generator)
    distance = _uniform(*config.distance_range, groups, generator)
    fovy = _uniform(*config.fovy_range, groups, generator)
    start = _uniform(*config.azimuth_range, groups, generator)
    if views_per_group > 1:
        steps = torch.arange(views_per_group, dtype=torch.float32) * (360.0 / views_per_group)
        azimuth = (start[:, None] + steps).reshape(-1)
        elevation, distance, fovy = (v.repeat_interleave(views_per_group) for v in (elevation, distance, fovy))
    else:
        azimuth = start
    return Cameras.from_spherical(azimuth, elevation, distance, fovy, config.resolution)


def eval_cameras(config: CameraConfig, n_views: int | None = None, resolution: int | None = None) -> Cameras:
    """Evenly spaced preview cameras around the object, the first looking at its front."""
    return orbit_cameras(
        n_views or config.eval_views,
        config.eval_elevation,
        config.eval_distance,
        config.eval_fovy,
        resolution or config.eval_resolution,
    )
