"""The renderers' config dataclasses, torch-free: a run's config validates (and the command line
answers a usage error) without importing torch. Each is re-exported beside the class it configures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from dreamsmith.configs import Range


@dataclass
class VolumeRendererConfig:
    sampler: str = "auto"
    """Ray sampler: auto (occupancy_grid on CUDA, dense otherwise), dense or occupancy_grid."""
    n_samples: Annotated[int, Range(1, 1024)] = 64
    """Samples per ray of the dense sampler."""
    prune_threshold: float = 1e-4
    """Dense sampler: samples whose weight is below this get no gradient, and no normal in shaded renders
    (0 disables pruning)."""
    render_step_size: float = 0.005
    """Occupancy-grid sampler: marching step (metres)."""
    grid_resolution: int = 64
    """Occupancy grid (either sampler): cells per side."""
    grid_update_every: int = 16
    """Occupancy grid (either sampler): steps between grid updates."""
    skip_empty: bool = True
    """Dense sampler: skip samples in cells of the occupancy grid that hold no visible density."""
    skip_alpha: float = 1e-4
    """Dense sampler: a cell is empty when its density gives every sample in it an alpha below this
    (at most prune_threshold, so skipped samples are ones that got no gradient anyway)."""


@dataclass
class MeshRendererConfig:
    """Configuration of the mesh renderer."""

    backend: str = "auto"
    """Rasterizer: auto (nvdiffrast on CUDA when installed, else open3d), open3d or nvdiffrast."""
    smooth_normals: bool = True
    """Shade with interpolated area-weighted vertex normals; False uses flat face normals."""
    antialias: bool = True
    """Blend silhouette edges; without it opacity has no gradient with respect to the outline."""
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Solid background (sRGB in [0, 1]) when the call gives no background."""
    ambient: float = 0.4
    """Ambient light of the lambertian and textureless modes."""
    diffuse: float = 0.6
    """Diffuse light of the lambertian and textureless modes."""
