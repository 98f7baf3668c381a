"""The rendered-normal smoothness regularizer on normal maps with known answers."""

import math

import torch

from dreamsmith.engine.losses import LossConfig, needs_normals, normal_smoothness_loss, regularizer_losses
from dreamsmith.renderers.outputs import RenderOutput


def test_a_flat_surface_costs_nothing_and_a_crease_costs_its_angle():
    normal = torch.zeros(1, 4, 4, 3)
    normal[..., 2] = 1.0
    opacity = torch.ones(1, 4, 4, 1)
    assert normal_smoothness_loss(normal, opacity).item() == 0.0
    normal[:, :, 2:] = torch.tensor([1.0, 0.0, 0.0])  # a 90 degree crease between columns 1 and 2
    # 4 of the 24 neighbouring pairs straddle it, each costing 1 - cos(90) = 1
    assert math.isclose(normal_smoothness_loss(normal, opacity).item(), 4 / 24, rel_tol=1e-6)


def test_empty_pixels_do_not_count():
    normal = torch.nn.functional.normalize(torch.randn(1, 8, 8, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    opacity = torch.zeros(1, 8, 8, 1)
    normal[:, :, :4] = torch.tensor([0.0, 1.0, 0.0])
    opacity[:, :, :4] = 1.0
    assert normal_smoothness_loss(normal, opacity).item() < 1e-6


def test_its_gradient_turns_a_noisy_normal_towards_its_neighbours():
    normal = torch.zeros(1, 3, 3, 3)
    normal[..., 2] = 1.0
    normal[0, 1, 1] = torch.nn.functional.normalize(torch.tensor([1.0, 0.0, 1.0]), dim=0)
    normal.requires_grad_(True)
    normal_smoothness_loss(normal, torch.ones(1, 3, 3, 1)).backward()
    stepped = torch.nn.functional.normalize(normal[0, 1, 1] - 0.5 * normal.grad[0, 1, 1], dim=0)
    assert stepped[2] > normal[0, 1, 1, 2] + 0.01  # closer to its neighbours' +z


def test_the_weight_switches_the_loss_and_the_normal_renders_on():
    normal = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    render = RenderOutput(rgb=torch.zeros(2, 4, 4, 3), opacity=torch.ones(2, 4, 4, 1), depth=torch.zeros(2, 4, 4, 1),
                          normal=normal)
    off = LossConfig(lambda_orient=0.0, lambda_sparsity=0.0)
    on = LossConfig(lambda_orient=0.0, lambda_sparsity=0.0, lambda_normal_smoothness=2.0)
    assert regularizer_losses(render, off, 0) == {} and not needs_normals(off, 0)
    assert needs_normals(on, 0)
    expected = 2.0 * normal_smoothness_loss(normal, render.opacity)
    assert torch.allclose(regularizer_losses(render, on, 0)["normal_smoothness"], expected)
