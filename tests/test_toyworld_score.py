"""The toyworld score on known answers."""

import numpy as np
import pytest
import torch
import trimesh

from dreamsmith.representations.mesh import Mesh
from dreamsmith.toyworld import world as tw
from dreamsmith.toyworld.score import ground_truth_mesh, score_mesh, truth_occupancy


def test_ground_truth_scores_perfectly_against_itself():
    score = score_mesh(ground_truth_mesh("a red cube", resolution=64), "a red cube")
    assert score.iou > 0.97 and score.colour_error < 0.01


@pytest.mark.parametrize("text", ["a red cube", "a blue torus", "an orange cone"])
def test_ground_truth_scores_one_in_3d(text):
    score = score_mesh(ground_truth_mesh(text), text)
    assert score.volume_iou > 0.97
    assert score.top_iou > 0.97
    assert score.extent_error < 0.02


def test_wrong_shape_and_colour_score_badly():
    torus = ground_truth_mesh("a blue torus", resolution=64)
    score = score_mesh(torus, "a red cube")
    assert score.iou < 0.6
    assert abs(score.colour_error - np.abs(np.array([0.85, 0.1, 0.1]) - [0.15, 0.3, 0.9]).mean()) < 0.02


def dense_iou(sdf_a, sdf_b, n: int = 2_000_000) -> float:
    """IoU of two analytic shapes by Monte Carlo over [-0.6, 0.6]^3 (independent of any mesh)."""
    points = (torch.rand(n, 3, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6).double()
    a, b = sdf_a(points) < 0, sdf_b(points) < 0
    return float((a & b).sum() / (a | b).sum())


def test_a_sphere_in_place_of_a_cube_scores_its_analytic_volume_iou_and_extent():
    sphere = ground_truth_mesh("a red sphere")
    score = score_mesh(sphere, "a red cube")
    expected = dense_iou(tw.sdf_sphere, tw.sdf_cube)
    assert 0.5 < expected < 0.6
    assert score.volume_iou == pytest.approx(expected, abs=0.02)
    assert score.extent_ratio == pytest.approx([0.9 / 0.6] * 3, rel=0.02)
    assert score.extent_error == pytest.approx(0.5, abs=0.02)
    assert score.colour_error < 0.01


def test_a_filled_disc_in_place_of_a_torus_is_seen_from_above_and_in_volume():
    disc = trimesh.creation.cylinder(radius=0.44, height=0.24, sections=96)
    disc.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))  # axis Z -> Y
    colours = np.tile(tw.COLOURS["blue"], (len(disc.vertices), 1))
    score = score_mesh(Mesh(disc.vertices, disc.faces, vertex_colors=colours), "a blue torus")
    torus_volume = 2 * np.pi**2 * tw.TORUS_MAJOR_RADIUS * tw.TORUS_MINOR_RADIUS**2
    disc_volume = np.pi * 0.44**2 * 0.24
    assert score.volume_iou == pytest.approx(torus_volume / disc_volume, abs=0.03)
    # from straight above the disc covers 1 / (1 - (0.2 / 0.44)^2) = 1.26 times the ring's area
    assert score.top_iou < 0.8
    assert score.extent_error < 0.02


def test_truth_occupancy_holds_the_shapes_volume():
    cell = 2 * tw.SCORE_VOLUME_BOUND / tw.SCORE_VOLUME_RESOLUTION
    assert truth_occupancy("a red sphere").sum() * cell**3 == pytest.approx(4 / 3 * np.pi * 0.45**3, rel=0.03)


def test_an_empty_asset_scores_zero():
    mesh = ground_truth_mesh("a red cube", resolution=32)
    score = score_mesh(mesh.copy(faces=mesh.faces[:0]), "a red cube")
    assert score.iou == 0.0 and score.volume_iou == 0.0 and score.top_iou == 0.0
