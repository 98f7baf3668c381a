"""The sphere tracer against closed-form images of a sphere and a cube."""

from __future__ import annotations

import math

import pytest
import torch

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.sdf_tracer import render_sdf
from dreamsmith.toyworld import world as tw

RED = torch.tensor([0.85, 0.10, 0.10])


def _cameras(azimuth: list[float], elevation: list[float], resolution: int, distance: float = 2.0) -> Cameras:
    return Cameras.from_spherical(torch.tensor(azimuth), torch.tensor(elevation), torch.tensor(distance),
                                  torch.tensor(40.0), resolution)


def test_sphere_silhouette_matches_projected_disk_area() -> None:
    resolution, radius, distance = 64, tw.SPHERE_RADIUS, 2.0
    cameras = _cameras([0.0, 90.0, 200.0], [0.0, 45.0, -10.0], resolution, distance)
    out = render_sdf(tw.sdf_sphere, cameras, RED)
    focal = 0.5 * resolution / math.tan(math.radians(20.0))
    disk_radius = focal * math.tan(math.asin(radius / distance))  # the silhouette cone's image
    area = out.opacity.sum(dim=(1, 2, 3))
    assert torch.allclose(area, torch.full_like(area, math.pi * disk_radius**2), rtol=0.02)
    assert set(out.opacity.unique().tolist()) <= {0.0, 1.0}


def test_centre_pixel_depth_and_headlight_shading() -> None:
    # odd size: the centre pixel's ray is the optical axis, hitting the sphere head on
    out = render_sdf(tw.sdf_sphere, _cameras([30.0], [20.0], 33), RED)
    assert out.depth[0, 16, 16, 0].item() == pytest.approx(2.0 - tw.SPHERE_RADIUS, abs=1e-5)
    assert out.rgb[0, 16, 16].tolist() == pytest.approx(RED.tolist(), abs=1e-5)  # albedo x (0.4 + 0.6 x 1)
    position = _cameras([30.0], [20.0], 33).position[0]
    assert out.normal[0, 16, 16].tolist() == pytest.approx((position / position.norm()).tolist(), abs=5e-4)


def test_background_is_white_with_zero_opacity_depth_and_normal() -> None:
    out = render_sdf(tw.sdf_sphere, _cameras([0.0], [0.0], 32), RED)
    corner = (slice(None), slice(0, 4), slice(0, 4))
    assert (out.rgb[corner] == 1.0).all()
    assert (out.opacity[corner] == 0.0).all() and (out.depth[corner] == 0.0).all()
    assert (out.normal[corner] == 0.0).all()


def test_shading_follows_lambert_at_the_sphere_rim() -> None:
    # away from the centre n.l falls, so brightness lies between ambient (0.4) and full (1.0)
    out = render_sdf(tw.sdf_sphere, _cameras([0.0], [0.0], 33), RED)
    hit = out.opacity[0, ..., 0] > 0
    brightness = out.rgb[0][hit][:, 0] / RED[0]
    assert brightness.min().item() > 0.4 and brightness.max().item() == pytest.approx(1.0, abs=1e-5)
    ray_dot_normal = out.rgb[0, 16, 20, 0] / RED[0]
    assert 0.4 < ray_dot_normal.item() < 1.0


def test_cube_front_face_seen_head_on() -> None:
    # camera on +Z at elevation 0 sees only the front face: normal +Z, depth 2 - 0.3 along the axis
    out = render_sdf(tw.sdf_cube, _cameras([0.0], [0.0], 33), RED)
    assert out.normal[0, 16, 16].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-4)
    assert out.depth[0, 16, 16, 0].item() == pytest.approx(2.0 - 0.3, abs=1e-5)
    # the face spans 0.6 m at 1.7 m: its width in pixels is 0.6 / 1.7 x focal
    focal = 0.5 * 33 / math.tan(math.radians(20.0))
    assert out.opacity[0, 16, :, 0].sum().item() == pytest.approx(0.6 / 1.7 * focal, abs=1.0)


def test_torus_has_a_hole_seen_from_above() -> None:
    out = render_sdf(tw.sdf_torus, _cameras([0.0], [89.0], 33), RED)
    assert out.opacity[0, 16, 16, 0].item() == 0.0
    assert out.opacity[0].sum().item() > 50
