"""A stage's NeRF: the field, its background and the volume renderer (DreamFusion, Magic3D's coarse stage)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dreamsmith.engine.camera_sampling import eval_cameras
from dreamsmith.engine.config import ExportConfig, StageConfig
from dreamsmith.engine.losses import regularizer_losses
from dreamsmith.engine.memory import chunk_points
from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.isosurface import density_volume, volume_mesh
from dreamsmith.exporters.threshold import (
    RAY_MAX_POINT_BYTES,
    candidate_thresholds,
    opacity_silhouette,
    ray_max_density,
    silhouette_threshold,
)
from dreamsmith.renderers.cameras import Cameras, orbit_cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.renderers.volume import VolumeRenderer
from dreamsmith.representations.background import Background
from dreamsmith.representations.chunked import evaluate_in_chunks
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.nerf import NeRFField

AUTO_VIEWS = 8
"""Views per ring when the export threshold is "auto" (the preview ring, half as many from above)."""
AUTO_RESOLUTION = 64
AUTO_HIGH_ELEVATION = 60.0


class NeRFRepresentation:
    """A ``NeRFField`` seen through the volume renderer, over a ``Background``.

    Every batched evaluation of the field without gradients (previews, the occupancy grid, the
    density volume, vertex colours, baking, the auto threshold's renders) holds at most
    ``chunk_points`` points at once: the memory budget's share over the field's cost per point.
    """

    def __init__(self, config: StageConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.field = NeRFField(config.nerf, device=device).to(device)
        self.background = Background(config.background).to(device)
        self.renderer = VolumeRenderer(config.renderer, bound=config.nerf.bound, device=device).to(device)
        self.chunk_points = chunk_points(self.field.bytes_per_point() + self.renderer.bytes_per_sample())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group (``lr_<name>`` of the stage's optimizer config)."""
        groups = self.field.parameter_groups()
        if self.config.background.kind == "mlp":
            groups["background"] = list(self.background.parameters())
        return groups

    def set_step(self, step: int) -> None:
        """Progressive hash-grid levels and the occupancy grid's refresh."""
        self.field.set_step(step)
        self.renderer.update_occupancy(self.field, step, self.chunk_points)

    def render(
        self,
        cameras: Cameras,
        shading: str,
        light_dir: Tensor | None,
        background_color: Tensor | None,
        generator: torch.Generator | None,
        need_normals: bool,
    ) -> RenderOutput:
        """A training render (see ``VolumeRenderer.forward``)."""
        shading_config = self.config.shading
        return self.renderer(
            self.field,
            self.background,
            cameras,
            shading=shading,
            light_dir=light_dir,
            ambient=shading_config.ambient,
            diffuse=shading_config.diffuse,
            background_color=background_color,
            generator=generator,
            need_normals=need_normals,
        )

    @torch.no_grad()
    def render_previews(self, cameras: Cameras, shading: str) -> RenderOutput:
        """Deterministic renders of ``cameras`` in chunks, headlight."""
        shading_config = self.config.shading
        return self.renderer.render_chunked(
            self.field,
            self.background,
            cameras,
            self.chunk_points,
            shading=shading,
            light_dir=None,
            ambient=shading_config.ambient,
            diffuse=shading_config.diffuse,
        )

    def regularizers(self, render: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted orientation, sparsity and opacity losses of ``render``."""
        return regularizer_losses(render, self.config.loss, step)

    def albedo(self, points: Tensor) -> Tensor:
        """The field's albedo at ``points [N, 3]`` (in chunks)."""
        return evaluate_in_chunks(self.field.albedo, points.to(self.device), self.chunk_points)

    def density(self, points: Tensor) -> Tensor:
        """The field's density ``[N]`` (per metre) at ``points [N, 3]`` (in chunks): with it the export bakes
        the colour the field shows, not only the albedo at its level set."""
        return evaluate_in_chunks(self.field.density, points.to(self.device), self.chunk_points)

    def state_dict(self) -> dict[str, Any]:
        return {
            "field": self.field.state_dict(),
            "background": self.background.state_dict(),
            "renderer": self.renderer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        # checkpoints from before the occupancy grid keep the fresh (all-occupied) grid
        self.renderer.load_state_dict({**self.renderer.state_dict(), **state["renderer"]})

    def init_from(self, previous: Any, export: ExportConfig) -> None:
        """Continue from the previous stage's NeRF: its field's parameters."""
        if not isinstance(previous, NeRFRepresentation):
            raise DreamsmithError(f"a nerf stage cannot start from a {type(previous).__name__}")
        self.field.load_state_dict(previous.field.state_dict())

    def export_mesh(self, export: ExportConfig) -> Mesh:
        """Marching cubes of the density at the surface threshold, vertex colours from the albedo."""
        volume = self.density_volume(export)
        threshold = self.surface_threshold(export, volume)
        mesh = volume_mesh(volume, self.field.albedo, self.config.nerf.bound, threshold,
                           export.keep_components_fraction, self.device, self.chunk_points)
        if mesh.n_faces == 0:
            raise DreamsmithError(
                f"the optimized field has no surface at density {threshold:g}: nothing to export. "
                "Look at previews/; try more --steps or a lower export.isosurface_threshold=..."
            )
        return mesh

    def density_volume(self, export: ExportConfig) -> np.ndarray:
        """The field's density on the export grid, blurred as ``export`` says."""
        return density_volume(self.field.density, self.config.nerf.bound, export.isosurface_resolution,
                              self.device, export.isosurface_smoothing, self.chunk_points)

    @torch.no_grad()
    def surface_threshold(self, export: ExportConfig, volume: np.ndarray | None = None) -> float:
        """``export.isosurface_threshold``; for "auto", the density whose silhouettes best match the
        field's own rendered silhouettes (opacity above half its peak) from the preview ring and a ring
        from above
        (:mod:`dreamsmith.exporters.threshold`)."""
        if export.isosurface_threshold != "auto":
            return float(export.isosurface_threshold)
        bound = self.config.nerf.bound
        if volume is None:
            volume = self.density_volume(export)
        camera = self.config.camera
        rings = [eval_cameras(camera, AUTO_VIEWS, AUTO_RESOLUTION),
                 orbit_cameras(AUTO_VIEWS // 2, AUTO_HIGH_ELEVATION, camera.eval_distance, camera.eval_fovy,
                               AUTO_RESOLUTION, start_azimuth_deg=360.0 / AUTO_VIEWS)]
        ray_max, opacity = [], []
        for cameras in rings:
            cameras = cameras.to(self.device)
            opacity.append(self.render_previews(cameras, "albedo").opacity[..., 0].flatten())
            ray_max.append(ray_max_density(volume, bound, cameras,
                                           chunk_points=chunk_points(RAY_MAX_POINT_BYTES)).flatten())
        candidates = candidate_thresholds(volume)
        target = opacity_silhouette(torch.cat(opacity))
        if not target.any() or candidates.numel() == 0:
            raise DreamsmithError(
                "the optimized field renders nothing opaque: there is no surface to export. "
                "Look at previews/; try more --steps"
            )
        threshold, _ = silhouette_threshold(torch.cat(ray_max), target, candidates.to(self.device))
        return threshold
