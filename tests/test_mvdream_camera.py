"""MVDream's camera input from dreamsmith cameras, checked against MVDream's own camera function.

``data/mvdream_cameras.json`` holds what MVDream's ``normalize_camera(get_camera(4, elevation,
azimuth_start, 360, blender_coord=True))`` returns for a few groups of four views (its ``source``
field says exactly how it was made).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dreamsmith.guidance.mvdream_camera import mvdream_camera_labels, to_mvdream_c2w
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.renderers.cameras import Cameras

POSES = json.loads((Path(__file__).parent / "data" / "mvdream_cameras.json").read_text())["poses"]


def group(elevation: float, azimuth_start: float, distance: float) -> Cameras:
    azimuth = azimuth_start + torch.arange(4.0) * 90.0
    return Cameras.from_spherical(azimuth, torch.tensor(float(elevation)), torch.tensor(distance),
                                  torch.tensor(40.0), 8)


@pytest.mark.parametrize("pose", POSES, ids=lambda p: f"elev{p['elevation']}-az{p['azimuth_start']}")
@pytest.mark.parametrize("distance", [1.0, 2.7])
def test_labels_equal_mvdreams_own_cameras_at_any_distance(pose, distance):
    labels = mvdream_camera_labels(group(pose["elevation"], pose["azimuth_start"], distance).c2w)
    torch.testing.assert_close(labels, torch.tensor(pose["cameras"]), rtol=0, atol=2e-6)


def test_the_frame_is_blenders_z_up_with_the_front_camera_on_minus_y():
    c2w = to_mvdream_c2w(group(0.0, 0.0, 2.0).c2w)
    front, left = c2w[0, :3, 3], c2w[1, :3, 3]
    torch.testing.assert_close(front, torch.tensor([0.0, -2.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(left, torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    above = to_mvdream_c2w(group(90.0, 0.0, 2.0).c2w)[0, :3, 3]
    torch.testing.assert_close(above, torch.tensor([0.0, 0.0, 2.0]), atol=1e-6, rtol=0)
    rotation = c2w[:, :3, :3]
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-6, rtol=0)


def test_translations_have_unit_length():
    c2w = group(23.0, 11.0, 3.3).c2w
    translation = mvdream_camera_labels(c2w).reshape(-1, 4, 4)[:, :3, 3]
    torch.testing.assert_close(translation.norm(dim=-1), torch.ones(4))
    assert math.isclose(float(c2w[0, :3, 3].norm()), 3.3, rel_tol=1e-6)  # the input is left alone


def test_a_prior_declaring_mvdream_cameras_feeds_these_labels_to_its_unet(tiny_sd_prior):
    prior = DiffusionPrior.__new__(DiffusionPrior)
    prior.__dict__.update(tiny_sd_prior.__dict__, camera_conditioning="mvdream")
    cameras = group(15.0, 0.0, 1.8)
    labels = prior.camera_labels(cameras, 8)  # both CFG branches
    torch.testing.assert_close(labels, torch.tensor(POSES[0]["cameras"]).repeat(2, 1), atol=2e-6, rtol=0)
