"""The configs of a stage's parts (cameras, shading, losses, optimizer), torch-free: a run's config
validates (and the command line answers a usage error) without importing torch. Each is re-exported
by the module that uses it (``camera_sampling``, ``shading_sampling``, ``losses``, ``optim``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from dreamsmith.configs import Range
from dreamsmith.schedules import ScheduleSpec


@dataclass
class CameraConfig:
    batch_size: Annotated[int, Range(1, 256)] = 1
    """Views rendered per optimization step."""
    resolution: Annotated[int, Range(8, 4096)] = 64
    """Render height and width in pixels."""
    elevation_range: Annotated[tuple[float, float], Range(-90, 90)] = (-10.0, 90.0)
    """Elevation of random cameras (degrees above the XZ plane)."""
    azimuth_range: Annotated[tuple[float, float], Range(-360, 360)] = (-180.0, 180.0)
    """Azimuth of random cameras (degrees; 0 looks at the front, +Z)."""
    distance_range: Annotated[tuple[float, float], Range(0.01, 1000)] = (1.5, 2.0)
    """Distance of random cameras from the origin (metres)."""
    fovy_range: Annotated[tuple[float, float], Range(1, 179)] = (40.0, 70.0)
    """Vertical field of view of random cameras (degrees)."""
    eval_elevation: Annotated[float, Range(-90, 90)] = 15.0
    """Elevation of preview cameras (degrees)."""
    eval_distance: Annotated[float, Range(0.01, 1000)] = 2.0
    """Distance of preview cameras (metres)."""
    eval_fovy: Annotated[float, Range(1, 179)] = 50.0
    """Field of view of preview cameras (degrees)."""
    eval_views: Annotated[int, Range(1, 64)] = 8
    """Views in a preview grid."""
    eval_resolution: Annotated[int, Range(8, 4096)] = 128
    """Resolution of preview views."""


@dataclass
class ShadingConfig:
    albedo_steps: int = 1000
    """Steps at the start that render albedo only."""
    albedo_probability: float = 0.2
    """Afterwards, chance of an albedo render."""
    textureless_probability: float = 0.5
    """Chance of a textureless render among the shaded ones."""
    light: str = "dreamfusion"
    """dreamfusion: a directional light near the camera, perturbed; headlight: light from the camera."""
    light_perturb: float = 1.0
    """Standard deviation of the light position perturbation (metres) for the dreamfusion light."""
    ambient: float = 0.1
    """Ambient light."""
    diffuse: float = 0.9
    """Diffuse light."""
    guide_normals: bool = False
    """The guidance judges the normal map ((n + 1)/2 over white) instead of the shaded colour, so only the
    geometry can answer it (ProlificDreamer's geometry stage: SDS on normals)."""
    preview_shading: str = "lambertian"
    """Shading of preview renders."""


@dataclass
class LossConfig:
    """Regularizer weights: orient, sparsity, opaque and normal_smoothness act on NeRF renders; normal_consistency,
    laplacian and sdf_sign on DMTets."""

    lambda_orient: Annotated[ScheduleSpec, Range(0, None)] = (0, 10.0, 1000.0, 5000)
    """Orientation loss weight (DreamFusion: visible normals must not face away from the camera);
    a number or [start_step, start_value, end_value, end_step]."""
    lambda_sparsity: Annotated[ScheduleSpec, Range(0, None)] = 1.0
    """Weight of the opacity sparsity loss mean(sqrt(opacity^2 + 0.01)) (threestudio)."""
    lambda_opaque: Annotated[ScheduleSpec, Range(0, None)] = 0.0
    """Weight of the binary-entropy loss pushing opacity to 0 or 1 (removes haze)."""
    lambda_normal_smoothness: Annotated[ScheduleSpec, Range(0, None)] = 0.0
    """Weight of the rendered normals' smoothness: mean (1 - cos) between neighbouring foreground pixels'
    normals (against the noisy shell of a NeRF; needs normal renders)."""
    lambda_normal_consistency: Annotated[ScheduleSpec, Range(0, None)] = 0.0
    """Weight of the mesh normal consistency, mean(1 - cos) of neighbouring face normals (Magic3D)."""
    lambda_laplacian: Annotated[ScheduleSpec, Range(0, None)] = 0.0
    """Weight of the mesh's uniform Laplacian smoothness."""
    lambda_sdf_sign: Annotated[ScheduleSpec, Range(0, None)] = 0.0
    """Weight of nvdiffrec's SDF sign regularizer: removes surfaces no view sees (bubbles inside the shape)."""


@dataclass
class OptimConfig:
    lr_encoding: Annotated[ScheduleSpec, Range(0, None)] = 0.01
    """Learning rate of the hash-grid tables (number or schedule); in a dmtet stage, the texture field's."""
    lr_mlp: Annotated[ScheduleSpec, Range(0, None)] = 0.001
    """Learning rate of the density and albedo MLPs; in a dmtet stage, the texture field's albedo MLP."""
    lr_geometry: Annotated[ScheduleSpec, Range(0, None)] = 0.01
    """Learning rate of a DMTet's SDF (metre-like values) and vertex deformation (dmtet stages)."""
    lr_texture: Annotated[ScheduleSpec, Range(0, None)] = 0.05
    """Learning rate of a texture stage's texel logits."""
    lr_background: Annotated[ScheduleSpec, Range(0, None)] = 0.001
    """Learning rate of a learned background."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: Annotated[float, Range(0, 1)] = 1e-15
    """Adam epsilon (tiny: hash-grid entries get rare, small gradients)."""
