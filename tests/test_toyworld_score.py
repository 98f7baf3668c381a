"""The toyworld score on known answers."""

import numpy as np

from dreamsmith.toyworld.score import ground_truth_mesh, score_mesh


def test_ground_truth_scores_perfectly_against_itself():
    score = score_mesh(ground_truth_mesh("a red cube", resolution=64), "a red cube")
    assert score.iou > 0.97 and score.colour_error < 0.01


def test_wrong_shape_and_colour_score_badly():
    torus = ground_truth_mesh("a blue torus", resolution=64)
    score = score_mesh(torus, "a red cube")
    assert score.iou < 0.6
    assert abs(score.colour_error - np.abs(np.array([0.85, 0.1, 0.1]) - [0.15, 0.3, 0.9]).mean()) < 0.02


def test_an_empty_asset_scores_zero():
    mesh = ground_truth_mesh("a red cube", resolution=32)
    assert score_mesh(mesh.copy(faces=mesh.faces[:0]), "a red cube").iou == 0.0
