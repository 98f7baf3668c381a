"""The camera conventions of DESIGN.md, asserted on numbers."""

import torch

from dreamsmith.engine.camera_sampling import CameraConfig, sample_cameras
from dreamsmith.renderers.cameras import Cameras


def cams(azimuth, elevation=0.0, distance=2.0, fovy=40.0, resolution=33):
    return Cameras.from_spherical(torch.tensor([azimuth]), torch.tensor(elevation), torch.tensor(distance),
                                  torch.tensor(fovy), resolution)


def test_azimuth_zero_is_on_plus_z_and_ninety_on_plus_x():
    assert torch.allclose(cams(0.0).position[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)
    assert torch.allclose(cams(90.0).position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(cams(0.0, elevation=90.0 - 1e-4).position[0, 1], torch.tensor(2.0), atol=1e-5)


def test_c2w_is_a_rotation_looking_at_the_origin_with_y_up():
    camera = cams(37.0, elevation=25.0)
    rotation = camera.c2w[0, :3, :3]
    assert torch.allclose(rotation @ rotation.T, torch.eye(3), atol=1e-6)
    assert torch.det(rotation) > 0.999
    forward = -rotation[:, 2]
    assert torch.allclose(forward, -camera.position[0] / camera.position[0].norm(), atol=1e-6)
    assert rotation[1, 1] > 0  # camera up has a positive world-Y component


def test_rays_row_zero_looks_up_and_column_zero_looks_left():
    origins, directions = cams(0.0).generate_rays()
    centre = directions[0, 16, 16]
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert directions[0, 0, 16, 1] > 0.3  # top row points up (+Y)
    assert directions[0, 16, 0, 0] < -0.3  # left column points to -X for a camera on +Z
    # the top row's ray makes half the field of view with the axis (minus half a pixel)
    half = torch.rad2deg(torch.acos(-directions[0, 0, 16, 2]))
    assert abs(half.item() - 20.0) < 0.7


def test_sampled_groups_share_elevation_and_are_ninety_degrees_apart():
    config = CameraConfig(batch_size=8, elevation_range=(0, 30), distance_range=(1.5, 2.0))
    cameras = sample_cameras(config, torch.Generator().manual_seed(0), views_per_group=4)
    elevation = cameras.elevation.view(2, 4)
    assert torch.allclose(elevation, elevation[:, :1].expand(-1, 4))
    gaps = torch.diff(cameras.azimuth.view(2, 4), dim=1)
    assert torch.allclose(gaps, torch.full_like(gaps, 90.0))
    assert ((cameras.distance >= 1.5) & (cameras.distance <= 2.0)).all()


def test_sampling_is_reproducible_from_the_seed():
    config = CameraConfig(batch_size=3)
    a = sample_cameras(config, torch.Generator().manual_seed(5))
    b = sample_cameras(config, torch.Generator().manual_seed(5))
    assert torch.equal(a.c2w, b.c2w)
