"""Marching cubes of density fields and the GLB they become."""

import numpy as np
import torch
import trimesh

from dreamsmith.exporters.isosurface import density_mesh


def ball_density(points: torch.Tensor) -> torch.Tensor:
    return 100.0 * (0.4 - points.norm(dim=-1)).clamp(min=0) / 0.4 + (points[:, 0] > 0.9).float() * 0


def test_marching_cubes_of_a_ball_is_a_sphere_with_outward_faces():
    mesh = density_mesh(ball_density, lambda p: torch.full((p.shape[0], 3), 0.5), bound=1.0, resolution=64,
                        threshold=25.0)
    radius = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(radius.mean() - 0.3) < 0.01 and radius.std() < 0.01  # density 25 at r = 0.3
    tri = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tri.is_watertight and tri.volume > 0  # positive volume: outward winding
    assert np.allclose(mesh.vertex_colors, 0.5)


def test_small_floaters_are_removed():
    def two_balls(points):
        main = 100.0 * (0.4 - points.norm(dim=-1)).clamp(min=0) / 0.4
        floater = 100.0 * (0.06 - (points - torch.tensor([0.7, 0.7, 0.7])).norm(dim=-1)).clamp(min=0) / 0.06
        return main + floater

    mesh = density_mesh(two_balls, lambda p: torch.zeros(p.shape[0], 3), bound=1.0, resolution=64, threshold=25.0)
    assert np.linalg.norm(mesh.vertices, axis=1).max() < 0.35


def test_smoothing_closes_pinholes_in_a_thin_noisy_shell():
    generator = torch.Generator().manual_seed(0)
    holes = torch.rand(60, 3, generator=generator) * 2 - 1
    holes = 0.4 * holes / holes.norm(dim=-1, keepdim=True)

    def holey_shell(points):
        shell = 30.0 * ((points.norm(dim=-1) - 0.4).abs() < 0.04).float()
        near_hole = torch.cdist(points, holes).min(dim=-1).values < 0.035
        return torch.where(near_hole, torch.zeros_like(shell), shell)

    def grey(points):
        return torch.full((points.shape[0], 3), 0.5)

    def euler(mesh):
        return trimesh.Trimesh(mesh.vertices, mesh.faces).euler_number

    # Each pinhole is a tunnel between the shell's outer and inner surface (a handle: Euler number
    # drops by 2); closed, the shell is two nested spheres (Euler number 2 + 2).
    assert euler(density_mesh(holey_shell, grey, 1.0, 48, 5.0)) < -10
    assert euler(density_mesh(holey_shell, grey, 1.0, 48, 5.0, smoothing=1.0)) == 4
