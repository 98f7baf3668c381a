"""Volume rendering of a NeRF field (Mildenhall et al. 2020, Eq. 3) with nerfacc.

Two samplers give the same image:
- ``dense`` (any device): stratified samples between the ray's entry and exit of the field's cube,
  weights from nerfacc's batched ``render_weight_from_density``. Samples in cells that a PyTorch
  occupancy grid (:mod:`dreamsmith.renderers.occupancy`) marks empty are never evaluated (density 0:
  their alpha is below ``skip_alpha``). While training, and for shaded renders (whose normals cost
  3 extra queries), densities are first evaluated without gradients and only samples with a visible
  weight are re-evaluated with them (and their normals); the others keep their
  (detached) density, so transmittance stays exact, and are left out of the colour sums: a pixel
  changes by less than n_samples x prune_threshold, and backward skips samples that cannot matter.
- ``occupancy_grid`` (CUDA): nerfacc's ``OccGridEstimator`` marches only through occupied cells
  (Instant-NGP's occupancy grid), packed samples.
Shading happens per sample, then nerfacc accumulates along the rays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nerfacc
import torch
from torch import Tensor, nn

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.configs import VolumeRendererConfig
from dreamsmith.renderers.occupancy import OccupancyGrid
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.renderers.shading import shade
from dreamsmith.representations.background import Background
from dreamsmith.representations.nerf import NeRFField


def ray_cube_intersection(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances ``[R]`` of rays through the cube [-bound, bound]^3, and a hit mask."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(-1)
    hit = far > near
    return near, torch.where(hit, far, near), hit


def resolve_sampler(name: str, device: torch.device) -> str:
    """The sampler ``auto`` means on ``device``."""
    if name == "auto":
        return "occupancy_grid" if device.type == "cuda" else "dense"
    if name not in ("dense", "occupancy_grid"):
        raise ValueError(f"unknown sampler {name!r}; expected auto, dense or occupancy_grid")
    if name == "occupancy_grid" and device.type != "cuda":
        raise ValueError("the occupancy_grid sampler needs a CUDA device; use sampler=dense on the CPU")
    return name


@dataclass
class Samples:
    """Packed samples along rays: ``ray_indices [S]``, ``weights [S]``, distances ``t_mid [S]``, and
    the field's ``albedo [S, 3]`` and ``normal [S, 3]`` (or None) at them."""

    ray_indices: Tensor
    weights: Tensor
    t_mid: Tensor
    albedo: Tensor
    normal: Tensor | None


class VolumeRenderer(nn.Module):
    """Renders a ``NeRFField`` for a batch of cameras into a ``RenderOutput``."""

    def __init__(self, config: VolumeRendererConfig, bound: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.config = config
        self.bound = bound
        self.sampler = resolve_sampler(config.sampler, torch.device(device))
        self.estimator = None
        self.occupancy = None
        if self.sampler == "occupancy_grid":
            aabb = torch.tensor([-bound, -bound, -bound, bound, bound, bound], dtype=torch.float32)
            self.estimator = nerfacc.OccGridEstimator(aabb, resolution=config.grid_resolution).to(device)
        elif config.skip_empty:
            self.occupancy = OccupancyGrid(bound, config.grid_resolution, self.skip_density()).to(device)

    @staticmethod
    def bytes_per_sample() -> int:
        """Bytes the sampler itself holds per sample (distances, points, densities, weights, indices)."""
        return 96

    def skip_density(self) -> float:
        """The density below which a dense sample's alpha is under ``skip_alpha`` at the widest spacing
        (the cube's diagonal over ``n_samples``)."""
        widest = 2.0 * 3**0.5 * self.bound / self.config.n_samples
        return -math.log1p(-self.config.skip_alpha) / widest

    def update_occupancy(self, field: NeRFField, step: int, chunk_points: int = 1 << 18) -> None:
        """Refresh the occupancy grid from the field's density every ``grid_update_every`` steps (and
        at the first call, when it has never been updated)."""
        if self.occupancy is not None:
            fresh = bool(torch.isinf(self.occupancy.cell_density).any())
            if fresh or step % max(1, self.config.grid_update_every) == 0:
                self.occupancy.update(field.density, step, chunk_points)
            return
        if self.estimator is None:
            return
        step_size = self.config.render_step_size

        def occupancy(points: Tensor) -> Tensor:
            return field.density(points) * step_size

        self.estimator.update_every_n_steps(step, occupancy, occ_thre=0.01, n=self.config.grid_update_every)

    def forward(
        self,
        field: NeRFField,
        background: Background,
        cameras: Cameras,
        shading: str = "albedo",
        light_dir: Tensor | None = None,
        ambient: float = 0.4,
        diffuse: float = 0.6,
        background_color: Tensor | None = None,
        generator: torch.Generator | None = None,
        need_normals: bool | None = None,
    ) -> RenderOutput:
        """Render ``cameras``.

        shading: albedo | lambertian | textureless; light_dir: ``[B, 3]`` unit vectors towards a
        directional light, or None for a headlight (light from the camera, as the toyworld data);
        background_color: ``[3]`` random solid background for this step, or None for the learned one;
        generator: jitters the samples (training); None gives deterministic mid-interval samples;
        need_normals: compute normals (and the orientation loss) even for albedo shading; by
        default only shaded modes compute them.
        """
        origins, directions = cameras.generate_rays()
        batch, height, width = origins.shape[:3]
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        ray_light = self._ray_light(light_dir, directions, height * width)
        with_normals = shading != "albedo" if need_normals is None else need_normals or shading != "albedo"
        flat = self.render_rays(field, background, origins, directions, ray_light, shading, ambient, diffuse,
                                background_color, generator, with_normals)
        return RenderOutput(
            rgb=flat.rgb.view(batch, height, width, 3),
            opacity=flat.opacity.view(batch, height, width, 1),
            depth=flat.depth.view(batch, height, width, 1),
            normal=None if flat.normal is None else flat.normal.view(batch, height, width, 3),
            losses=flat.losses,
        )

    @staticmethod
    def _ray_light(light_dir: Tensor | None, directions: Tensor, pixels: int) -> Tensor:
        """Per ray ``[R, 3]`` the direction towards the light (a headlight when ``light_dir`` is None)."""
        if light_dir is None:
            return -directions
        return light_dir.to(directions).repeat_interleave(pixels, dim=0)

    def render_rays(
        self,
        field: NeRFField,
        background: Background,
        origins: Tensor,
        directions: Tensor,
        ray_light: Tensor,
        shading: str,
        ambient: float,
        diffuse: float,
        background_color: Tensor | None,
        generator: torch.Generator | None,
        with_normals: bool,
    ) -> RenderOutput:
        """Render rays ``origins, directions, ray_light [R, 3]``: a ``RenderOutput`` of ``[R, C]`` tensors."""
        n_rays = origins.shape[0]
        if self.sampler == "dense":
            samples = self._dense_samples(field, origins, directions, with_normals, generator)
        else:
            samples = self._grid_samples(field, origins, directions, with_normals, generator)
        index = samples.ray_indices
        colors = shade(shading, samples.albedo, samples.normal, ray_light[index], ambient, diffuse)
        weights = samples.weights[:, None]
        opacity = nerfacc.accumulate_along_rays(samples.weights, None, index, n_rays)
        rgb = nerfacc.accumulate_along_rays(samples.weights, colors, index, n_rays)
        depth = nerfacc.accumulate_along_rays(samples.weights, samples.t_mid[:, None], index, n_rays)
        sky = background(directions, background_color)
        rgb = rgb + (1.0 - opacity) * sky
        losses = {}
        normal_image = None
        if samples.normal is not None:
            normal_sum = nerfacc.accumulate_along_rays(samples.weights, samples.normal, index, n_rays)
            normal_image = nn.functional.normalize(normal_sum, dim=-1, eps=1e-8) * (opacity > 1e-4)
            # DreamFusion's orientation loss: visible normals should not face away from the camera.
            facing_away = (samples.normal * directions[index]).sum(-1).clamp(min=0.0) ** 2
            losses["orientation"] = (weights[:, 0].detach() * facing_away).sum() / n_rays
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, normal=normal_image, losses=losses)

    def _dense_samples(
        self,
        field: NeRFField,
        origins: Tensor,
        directions: Tensor,
        with_normals: bool,
        generator: torch.Generator | None,
    ) -> Samples:
        n_rays, n_samples = origins.shape[0], self.config.n_samples
        near, far, _ = ray_cube_intersection(origins, directions, self.bound)
        edges = torch.linspace(0.0, 1.0, n_samples + 1, device=origins.device)
        edges = near[:, None] + (far - near)[:, None] * edges  # [R, S + 1]
        t_starts, t_ends = edges[:, :-1], edges[:, 1:]
        if generator is None:
            offset = torch.full_like(t_starts, 0.5)
        else:
            offset = torch.rand(t_starts.shape, generator=generator, device=generator.device).to(origins.device)
        t_mid = t_starts + (t_ends - t_starts) * offset
        points = origins[:, None] + directions[:, None] * t_mid[..., None]  # [R, S, 3]
        flat_points = points.reshape(-1, 3)
        candidates = None if self.occupancy is None else self.occupancy.is_occupied(flat_points).nonzero()[:, 0]
        density_all = torch.zeros(n_rays * n_samples, device=origins.device)
        # Samples that cannot show (weight below the threshold) are dropped after a density-only pass when
        # the full evaluation costs more: with gradients, or with the finite-difference normals' 3 extra queries.
        if self.config.prune_threshold > 0 and (torch.is_grad_enabled() or with_normals):
            with torch.no_grad():
                if candidates is None:
                    density_all = field.density(flat_points)
                else:
                    density_all[candidates] = field.density(flat_points[candidates])
                weights_all, _, _ = nerfacc.render_weight_from_density(
                    t_starts, t_ends, density_all.view(n_rays, n_samples))
            kept = (weights_all.reshape(-1) > self.config.prune_threshold).nonzero()[:, 0]
        elif candidates is None:
            kept = torch.arange(n_rays * n_samples, device=origins.device)
        else:
            kept = candidates
        density, albedo, normal = field(flat_points[kept], with_normals=with_normals)
        density_full = density_all.index_put((kept,), density).view(n_rays, n_samples)
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, density_full)
        return Samples(
            ray_indices=torch.div(kept, n_samples, rounding_mode="floor"),
            weights=weights.reshape(-1)[kept],
            t_mid=t_mid.reshape(-1)[kept],
            albedo=albedo,
            normal=normal,
        )

    def _grid_samples(
        self,
        field: NeRFField,
        origins: Tensor,
        directions: Tensor,
        with_normals: bool,
        generator: torch.Generator | None,
    ) -> Samples:
        assert self.estimator is not None

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            points = origins[ray_indices] + directions[ray_indices] * ((t_starts + t_ends) / 2)[:, None]
            return field.density(points)

        with torch.no_grad():
            ray_indices, t_starts, t_ends = self.estimator.sampling(
                origins,
                directions,
                sigma_fn=sigma_fn,
                render_step_size=self.config.render_step_size,
                stratified=generator is not None,
            )
        t_mid = (t_starts + t_ends) / 2
        points = origins[ray_indices] + directions[ray_indices] * t_mid[:, None]
        density, albedo, normal = field(points, with_normals=with_normals)
        weights, _, _ = nerfacc.render_weight_from_density(
            t_starts, t_ends, density, ray_indices=ray_indices, n_rays=origins.shape[0]
        )
        return Samples(ray_indices=ray_indices, weights=weights, t_mid=t_mid, albedo=albedo, normal=normal)

    @torch.no_grad()
    def render_chunked(
        self,
        field: NeRFField,
        background: Background,
        cameras: Cameras,
        chunk_points: int,
        shading: str = "albedo",
        light_dir: Tensor | None = None,
        ambient: float = 0.4,
        diffuse: float = 0.6,
    ) -> RenderOutput:
        """Render without gradients (previews, scoring) with at most ``chunk_points`` field queries at
        a time: rays in chunks of ``chunk_points`` over the queries per ray (samples, times four with
        the finite-difference normals of shaded modes). Deterministic samples, learned background."""
        origins, directions = cameras.generate_rays()
        batch, height, width = origins.shape[:3]
        origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
        ray_light = self._ray_light(light_dir, directions, height * width)
        with_normals = shading != "albedo"
        per_ray = self.config.n_samples * (4 if with_normals else 1)
        rays = max(1, chunk_points // per_ray)
        parts = [
            self.render_rays(field, background, origins[i : i + rays], directions[i : i + rays],
                             ray_light[i : i + rays], shading, ambient, diffuse, None, None, with_normals)
            for i in range(0, origins.shape[0], rays)
        ]
        return RenderOutput(
            rgb=torch.cat([p.rgb for p in parts]).view(batch, height, width, 3),
            opacity=torch.cat([p.opacity for p in parts]).view(batch, height, width, 1),
            depth=torch.cat([p.depth for p in parts]).view(batch, height, width, 1),
            normal=None if not with_normals else torch.cat([p.normal for p in parts]).view(batch, height, width, 3),
        )
