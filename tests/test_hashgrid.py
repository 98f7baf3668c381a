"""The PyTorch hash grid: the dense levels (grid_sample) and the hashed levels compute the same math."""

import pytest
import torch

from dreamsmith.representations.hashgrid import (
    HashGrid,
    HashGridConfig,
    TorchHashGrid,
    corner_indices,
    corner_weights,
    level_resolutions,
)


def gather_level(table: torch.Tensor, resolution: int, points: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation by explicit gathers from a dense table ``[R+1, R+1, R+1, F]`` (z, y, x)."""
    scaled = points[None] * resolution
    cell = scaled.floor()
    indices = corner_indices(cell.long(), torch.tensor([resolution]), (resolution + 1) ** 3)
    weights = corner_weights(scaled - cell)
    flat = table.reshape(-1, table.shape[-1])
    return (flat[indices[0]] * weights[0][..., None]).sum(1)


def test_dense_levels_equal_explicit_trilinear_gathers():
    grid = TorchHashGrid(HashGridConfig(n_levels=3, log2_hashmap_size=16))
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    out = grid(points)
    for level, resolution in enumerate(grid.dense_resolutions):
        table = grid.dense_grids[level][0].permute(1, 2, 3, 0)
        expected = gather_level(table, resolution, points)
        assert torch.allclose(out[:, 2 * level : 2 * level + 2], expected, atol=1e-9)


def test_trilinear_weights_sum_to_one_and_reproduce_linear_functions():
    frac = torch.rand(1, 100, 3)
    weights = corner_weights(frac)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 100))
    corners = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.float32)
    assert torch.allclose(weights[0] @ corners, frac[0], atol=1e-6)


def test_hashed_indices_stay_in_the_table_and_levels_grow_geometrically():
    config = HashGridConfig(log2_hashmap_size=12)
    resolutions = level_resolutions(config)
    assert resolutions[0] == 16 and resolutions[-1] == int(16 * config.per_level_scale**15)
    grid = TorchHashGrid(config)
    assert len(grid.dense_resolutions) == 0 or (grid.dense_resolutions[-1] + 1) ** 3 <= 2**12
    cell = torch.randint(0, 2000, (len(resolutions), 50, 3))
    indices = corner_indices(cell, torch.tensor(resolutions), 2**12)
    assert indices.min() >= 0 and indices.max() < 2**12


def test_encoding_is_continuous_and_progressive_levels_mask_features():
    grid = HashGrid(HashGridConfig(n_levels=4, log2_hashmap_size=14, start_level=2, update_steps=10))
    with torch.no_grad():
        for parameter in grid.parameters():
            parameter.uniform_(-1, 1)
    points = torch.tensor([[0.3, 0.5, 0.7]])
    assert (grid(points + 1e-6) - grid(points - 1e-6)).abs().max() < 1e-3
    out = grid(torch.rand(10, 3))
    assert (out[:, 4:] == 0).all() and (out[:, :4] != 0).any()
    grid.set_step(25)
    assert (grid(torch.rand(10, 3))[:, 4:] != 0).any()


def test_fused_levels_equal_the_reference_path_values_and_table_gradients():
    grid = TorchHashGrid(HashGridConfig(n_levels=8, log2_hashmap_size=15))
    assert len(grid.dense_resolutions) == 2 and len(grid.hashed_resolutions) == 6  # both kinds of level
    with torch.no_grad():
        for parameter in grid.parameters():
            parameter.uniform_(-1, 1)
    points = torch.rand(3000, 3, generator=torch.Generator().manual_seed(1))
    points[:5] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]])
    weights = torch.randn(3000, grid.n_output_dims, generator=torch.Generator().manual_seed(2))
    results = {}
    for fused in (True, False):
        grid.fused = fused
        grid.zero_grad(set_to_none=True)
        out = grid(points)
        (out * weights).sum().backward()
        results[fused] = (out.detach(), [p.grad.clone() for p in grid.parameters()])
    assert torch.allclose(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    for fast, reference in zip(results[True][1], results[False][1], strict=True):
        assert reference.abs().sum() > 0
        assert torch.allclose(fast, reference, atol=1e-4, rtol=1e-4)


def test_fused_position_gradients_equal_the_reference_paths_and_double_backward_refuses():
    grid = TorchHashGrid(HashGridConfig(n_levels=8, log2_hashmap_size=15))
    with torch.no_grad():
        for parameter in grid.parameters():
            parameter.uniform_(-1, 1)
    points = torch.rand(400, 3, generator=torch.Generator().manual_seed(3)) * 0.98 + 0.01
    upstream = torch.randn(400, grid.n_output_dims, generator=torch.Generator().manual_seed(4))
    gradients = {}
    for fused in (True, False):
        grid.fused = fused
        moving = points.clone().requires_grad_(True)
        (grid(moving) * upstream).sum().backward()
        gradients[fused] = moving.grad
    assert gradients[False].abs().max() > 1.0
    assert torch.allclose(gradients[True], gradients[False], rtol=1e-4, atol=1e-3)
    grid.fused = True
    moving = points.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="differentiable once"):  # analytic normals take the reference path
        torch.autograd.grad(grid(moving).sum(), moving, create_graph=True)


def test_analytic_normals_keep_the_reference_path_for_their_second_derivative():
    from dreamsmith.representations.nerf import NeRFConfig, NeRFField

    field = NeRFField(NeRFConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12), normals="analytic"))
    assert field.encoding.grid.fused_position_gradients is False
    points = torch.rand(64, 3, generator=torch.Generator().manual_seed(5)) - 0.5
    density, _, normal = field(points, with_normals=True)
    normal.sum().backward()  # through the normals' own gradient
    assert field.encoding.grid.hash_tables.grad is not None


def test_no_points_encode_to_an_empty_batch_on_every_path():
    grid = TorchHashGrid(HashGridConfig(n_levels=8, log2_hashmap_size=15))
    for fused in (True, False):
        grid.fused = fused
        assert grid(torch.zeros(0, 3)).shape == (0, grid.n_output_dims)
        with torch.no_grad():
            assert grid(torch.zeros(0, 3)).shape == (0, grid.n_output_dims)
