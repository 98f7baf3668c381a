"""The "auto" export threshold: the density whose silhouettes match the NeRF's own opacity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.stages.nerf import NeRFRepresentation
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.exporters.isosurface import sample_grid
from dreamsmith.exporters.threshold import (
    candidate_thresholds,
    opacity_silhouette,
    ray_max_density,
    silhouette_threshold,
)
from dreamsmith.renderers.cameras import orbit_cameras
from dreamsmith.renderers.rasterizer import rasterize
from dreamsmith.renderers.sdf_tracer import render_sdf
from dreamsmith.toyworld import world as toyworld

CPU = torch.device("cpu")


def falling_density(points: torch.Tensor) -> torch.Tensor:
    """40 at the centre, falling linearly to 0 at radius 0.5: density d sits at radius 0.5 (1 - d/40)."""
    return 40.0 * (1.0 - points.norm(dim=-1) / 0.5).clamp(min=0)


def ball_silhouette(cameras, radius: float) -> torch.Tensor:
    """Pixels whose ray passes within ``radius`` of the origin."""
    origins, directions = cameras.generate_rays()
    return torch.linalg.cross(origins, directions, dim=-1).norm(dim=-1) < radius


def test_ray_maximum_gives_every_thresholds_silhouette_in_one_pass():
    cameras = orbit_cameras(4, 20.0, 2.0, 40.0, 48)
    ray_max = ray_max_density(sample_grid(falling_density, 0.6, 64), 0.6, cameras)
    for density in (5.0, 20.0, 35.0):
        truth = ball_silhouette(cameras, 0.5 * (1 - density / 40))
        mask = ray_max > density
        iou = (mask & truth).sum() / (mask | truth).sum()
        assert iou > 0.95, (density, float(iou))


def test_the_chosen_threshold_is_the_one_whose_silhouette_matches_the_target():
    cameras = orbit_cameras(4, 20.0, 2.0, 40.0, 48)
    volume = sample_grid(falling_density, 0.6, 64)
    ray_max = ray_max_density(volume, 0.6, cameras)
    for radius in (0.2, 0.35, 0.45):
        threshold, iou = silhouette_threshold(ray_max, ball_silhouette(cameras, radius), candidate_thresholds(volume))
        assert threshold == pytest.approx(40 * (1 - radius / 0.5), rel=0.1) and iou > 0.95


def test_no_candidates_below_the_lowest_density():
    assert candidate_thresholds(torch.full((4, 4, 4), 0.3).numpy()).numel() == 0


def toy_nerf(**nerf_options: float) -> tuple[NeRFRepresentation, object]:
    overrides = [f"nerf.{key}={value}" for key, value in nerf_options.items()]
    config = make_config("a white capsule", preset="toy", overrides=overrides)
    torch.manual_seed(0)
    return NeRFRepresentation(config.stages[0], CPU), config.export


class AnalyticField(torch.nn.Module):
    """A field with a known density in place of the NeRF's MLP."""

    def __init__(self, density) -> None:
        super().__init__()
        self.density = density

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return torch.full((points.shape[0], 3), 0.9)

    def forward(self, points: torch.Tensor, with_normals: bool = False):
        return self.density(points), self.albedo(points), None


def inside(sdf, points: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(-sdf(points) / 0.01)


def auto_surface(density) -> tuple[float, float, float, np.ndarray]:
    """For a field of ``density`` at the auto threshold: the threshold, the silhouette IoU of its mesh
    with the capsule's and with the field's own rendered opacity (> 0.5), on views it was not fitted
    on, and the mesh's bounding box."""
    nerf, export = toy_nerf()
    nerf.field = AnalyticField(density)
    export.isosurface_threshold = "auto"
    threshold = nerf.surface_threshold(export)
    mesh = nerf.export_mesh(export)
    cameras = orbit_cameras(6, 30.0, 2.0, 40.0, 64, start_azimuth_deg=15.0)
    mask = rasterize(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), cameras).mask[..., 0]
    capsule = render_sdf(toyworld.sdf_capsule, cameras, torch.ones(3)).opacity[..., 0] > 0.5
    rendered = nerf.render_previews(cameras, "albedo").opacity[..., 0] > 0.5

    def iou(other: torch.Tensor) -> float:
        return float((mask & other).sum() / (mask | other).sum())

    return threshold, iou(capsule), iou(rendered), mesh.bounds()


def test_a_translucent_object_exports_at_auto_where_a_fixed_threshold_finds_nothing():
    def translucent(points):  # its renders' opacity stays below 0.5 everywhere
        return 1.5 * inside(toyworld.sdf_capsule, points)

    nerf, export = toy_nerf()
    nerf.field = AnalyticField(translucent)
    export.isosurface_threshold = 5.0
    with pytest.raises(DreamsmithError, match="no surface at density 5"):
        nerf.export_mesh(export)
    threshold, capsule_iou, _, _ = auto_surface(translucent)
    # measured 0.81: the thin rim of a uniformly translucent capsule renders fainter than its middle
    assert threshold < 1.5 and capsule_iou > 0.75


def test_haze_around_a_solid_object_stays_out_of_the_auto_surface():
    def hazy(points):  # the capsule at density 50 inside a ball of density 0.3 (rays through it: opacity 0.3)
        return 50.0 * inside(toyworld.sdf_capsule, points) + 0.3 * (points.norm(dim=-1) < 0.7).float()

    threshold, _, rendered_iou, bounds = auto_surface(hazy)
    assert threshold > 0.3 and rendered_iou > 0.9
    half_extent = np.array([toyworld.CAPSULE_RADIUS, toyworld.CAPSULE_HEIGHT / 2, toyworld.CAPSULE_RADIUS])
    assert (np.abs(bounds) < half_extent + 0.05).all()


def test_a_field_with_nothing_opaque_is_a_clear_error():
    nerf, export = toy_nerf(blob_density=1.0, blob_radius=0.01)  # density below 1e-3 everywhere
    export.isosurface_threshold = "auto"
    with pytest.raises(DreamsmithError, match="renders nothing opaque"):
        nerf.export_mesh(export)


@pytest.mark.parametrize("value", ["-1", "0", "aut", "true"])
def test_bad_thresholds_are_refused_when_the_config_resolves(value):
    with pytest.raises(ConfigError, match="isosurface_threshold must be a density > 0 or \"auto\""):
        make_config("x", preset="toy", overrides=[f"export.isosurface_threshold={value}"])


def test_opacity_silhouette_is_half_the_peak_opacity():
    solid_in_haze = torch.tensor([0.0, 0.3, 0.3, 0.45, 0.55, 1.0, 1.0, 1.0])
    assert opacity_silhouette(solid_in_haze).tolist() == [False, False, False, False, True, True, True, True]
    translucent = torch.tensor([0.05, 0.05, 0.25, 0.35, 0.4, 0.45])
    assert opacity_silhouette(translucent).tolist() == [False, False, True, True, True, True]
    assert not opacity_silhouette(torch.full((5,), 0.1)).any()
