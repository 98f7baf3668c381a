"""Marching cubes of density fields and the GLB they become."""

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from dreamsmith.exporters.isosurface import density_mesh, fill_cavities, marching_cubes, sample_grid


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


def test_pinholes_in_a_thin_hollow_shell_are_closed_and_its_inside_filled():
    generator = torch.Generator().manual_seed(0)
    holes = torch.rand(60, 3, generator=generator) * 2 - 1
    holes = 0.4 * holes / holes.norm(dim=-1, keepdim=True)

    def holey_shell(points):
        shell = 30.0 * ((points.norm(dim=-1) - 0.4).abs() < 0.04).float()
        near_hole = torch.cdist(points, holes).min(dim=-1).values < 0.035
        return torch.where(near_hole, torch.zeros_like(shell), shell)

    def tri(mesh):
        return trimesh.Trimesh(mesh.vertices, mesh.faces)

    # Each pinhole would be a tunnel between the shell's outer and inner surface (a handle: Euler
    # number down by 2). Closed and filled, the asset is one solid ball, with or without smoothing.
    for smoothing in (0.0, 1.0):
        ball = tri(density_mesh(holey_shell, grey, 1.0, 48, 5.0, smoothing=smoothing))
        assert ball.euler_number == 2 and ball.is_watertight
        radius = np.linalg.norm(ball.vertices, axis=1).mean()  # 0.45 (0.48 blurred); hollow: ~45 % of it
        assert abs(ball.volume / (4 / 3 * np.pi * radius**3) - 1) < 0.05


def grey(points: torch.Tensor) -> torch.Tensor:
    return torch.full((points.shape[0], 3), 0.5)


def test_a_hollow_shell_exports_solid_and_an_open_hole_stays_open():
    def shell(points):  # dense only between r = 0.3 and 0.4: what a NeRF's unseen inside often is
        r = points.norm(dim=-1)
        return 100.0 * ((r > 0.3) & (r < 0.4)).float()

    mesh = density_mesh(shell, grey, bound=1.0, resolution=64, threshold=50.0)
    tri = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tri.is_watertight and len(tri.split(only_watertight=False)) == 1  # no inner surface
    assert abs(tri.volume - 4 / 3 * np.pi * 0.4**3) < 0.02 * 4 / 3 * np.pi * 0.4**3  # solid, not a shell

    def torus(points):  # major radius 0.5, minor 0.15: its hole connects to the outside
        ring = torch.stack([points[:, [0, 2]].norm(dim=-1) - 0.5, points[:, 1]], dim=-1).norm(dim=-1)
        return 100.0 * (ring < 0.15).float()

    tri = trimesh.Trimesh(*(lambda m: (m.vertices, m.faces))(
        density_mesh(torus, grey, bound=1.0, resolution=64, threshold=50.0)), process=False)
    assert tri.is_watertight and tri.euler_number == 0  # genus 1: the hole is still there


def test_filling_moves_a_smooth_surface_by_less_than_a_cell():
    """The closing also takes in cells just under the level in concave creases of a smooth field (the
    waist of two overlapping balls); they must join the solid where the surface already runs, not
    push it a cell outward (a value far above the level did: a pyramid on each such cell)."""
    resolution, bound, level = 48, 1.0, 6.5
    cell = 2 * bound / (resolution - 1)
    centres = torch.tensor([[-0.22, 0.03, 0.01], [0.22, -0.02, 0.04]])

    def peanut(points):  # NeRF-like: the level at r = 0.3 of either ball, rising steeply inside
        r = torch.cdist(points, centres).min(dim=-1).values
        return (level + 300.0 * (0.3 - r)).clamp(min=0.0)

    volume = sample_grid(peanut, bound, resolution)
    filled = fill_cavities(volume, level)
    assert (filled != volume).any()  # the waist's crease cells are taken in
    plain, closed = marching_cubes(volume, level, bound), marching_cubes(filled, level, bound)
    distance, _ = cKDTree(plain.vertices).query(closed.vertices)
    assert distance.max() < 0.5 * cell  # 0.94 cells with the old value, 0.10 now
