"""The "auto" export threshold: the density whose silhouettes match the NeRF's own opacity."""

from __future__ import annotations

import pytest
import torch

from dreamsmith.engine.representation_nerf import NeRFRepresentation
from dreamsmith.engine.setup import make_config
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.exporters.isosurface import sample_grid
from dreamsmith.exporters.threshold import candidate_thresholds, ray_max_density, silhouette_threshold
from dreamsmith.renderers.cameras import orbit_cameras
from dreamsmith.renderers.rasterizer import rasterize

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


def faint_nerf(blob_density: float, blob_radius: float = 0.5) -> NeRFRepresentation:
    overrides = [f"nerf.blob_density={blob_density}", f"nerf.blob_radius={blob_radius}"]
    config = make_config("a white capsule", preset="toy", overrides=overrides)
    torch.manual_seed(0)
    return NeRFRepresentation(config.stages[0], CPU), config.export


def test_a_faint_field_exports_at_auto_where_a_fixed_threshold_finds_nothing():
    nerf, export = faint_nerf(2.0)
    export.isosurface_threshold = 5.0
    with pytest.raises(DreamsmithError, match="no surface at density 5"):
        nerf.export_mesh(export)
    export.isosurface_threshold = "auto"
    threshold = nerf.surface_threshold(export)
    assert 0.5 <= threshold < 5.0
    mesh = nerf.export_mesh(export)
    cameras = orbit_cameras(6, 30.0, 2.0, 40.0, 64, start_azimuth_deg=15.0)  # not the views it was fitted on
    mask = rasterize(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), cameras).mask[..., 0]
    opaque = nerf.render_previews(cameras, "albedo").opacity[..., 0] > 0.5
    assert float((mask & opaque).sum() / (mask | opaque).sum()) > 0.9


def test_a_field_with_nothing_opaque_is_a_clear_error():
    nerf, export = faint_nerf(1.0, blob_radius=0.01)  # density below 1e-3 everywhere
    export.isosurface_threshold = "auto"
    with pytest.raises(DreamsmithError, match="renders nothing opaque"):
        nerf.export_mesh(export)


@pytest.mark.parametrize("value", ["-1", "0", "aut", "true"])
def test_bad_thresholds_are_refused_when_the_config_resolves(value):
    with pytest.raises(ConfigError, match="isosurface_threshold must be a density > 0 or \"auto\""):
        make_config("x", preset="toy", overrides=[f"export.isosurface_threshold={value}"])
