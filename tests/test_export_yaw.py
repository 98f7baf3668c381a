"""The export squares a turned asset to the axes (at most 45°), leaves round ones alone, and turns the
normals with the vertices."""

import math

import numpy as np
import pytest
import torch
import trimesh
from export_shapes import smooth_albedo

from dreamsmith.exporters.isosurface import marching_cubes, sample_grid
from dreamsmith.exporters.orient import footprint_yaw, yaw_matrix
from dreamsmith.exporters.pipeline import ExportOptions, export_mesh

SIDES = (0.6, 0.3, 0.4)  # x, y, z: unequal, so a quarter turn would show


def turned_box(degrees: float, sides=SIDES, resolution: int = 56):
    """Marching cubes of a box of ``sides`` turned ``degrees`` about +Y (as ``yaw_matrix`` turns)."""
    turn = torch.tensor(yaw_matrix(math.radians(degrees)), dtype=torch.float32)
    half = torch.tensor(sides) / 2

    def density(points):
        local = points @ turn.T  # undo the turn: v_world = v_local @ turn
        return 40.0 * (half - local.abs()).min(dim=-1).values

    return marching_cubes(sample_grid(density, 0.6, resolution), 0.0, 0.6)


def cylinder(resolution: int = 56):
    def density(points):
        radial = 0.3 - points[:, [0, 2]].norm(dim=-1)
        return 40.0 * torch.minimum(radial, 0.25 - points[:, 1].abs())

    return marching_cubes(sample_grid(density, 0.6, resolution), 0.0, 0.6)


def extents(vertices: np.ndarray) -> np.ndarray:
    return vertices.max(0) - vertices.min(0)


@pytest.mark.parametrize("degrees", [8.0, 30.0, -40.0, 65.0])
def test_a_turned_box_is_squared_by_the_smallest_turn(degrees):
    mesh = turned_box(degrees)
    angle = footprint_yaw(mesh.vertices)
    assert abs(angle) <= math.pi / 4 + 1e-9
    squared = extents(mesh.vertices @ yaw_matrix(angle))
    # 65° is squared by turning 25° on: the box ends along z, its x and z sides swapped
    expected = (SIDES[2], SIDES[1], SIDES[0]) if degrees > 45 else SIDES
    assert np.allclose(squared, expected, atol=0.02), squared
    assert math.degrees(abs(angle)) == pytest.approx(abs(degrees) if degrees <= 45 else 90 - degrees, abs=1.5)


def test_round_and_square_footprints_keep_their_yaw():
    assert footprint_yaw(cylinder().vertices) == 0.0
    assert footprint_yaw(turned_box(0.0).vertices) == 0.0
    assert footprint_yaw(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [2.0, 1.0, 2.0]])) == 0.0  # a line seen from above


def load_glb(path):
    return trimesh.load(path, force="mesh", process=False)


def test_export_squares_the_asset_turns_its_normals_and_keep_yaw_leaves_it(tmp_path):
    mesh = turned_box(30.0)
    outputs, written = {}, {}
    for align in (True, False):
        options = ExportOptions(texture_size=256, preview_resolution=0, align_yaw=align)
        written[align] = export_mesh(mesh, smooth_albedo, tmp_path / str(align), options).mesh
        outputs[align] = load_glb(tmp_path / str(align) / "asset.glb")
    assert np.allclose(outputs[True].extents, SIDES, atol=0.02)
    turned_extent = extents(mesh.vertices)
    assert np.allclose(outputs[False].extents, turned_extent, atol=0.005)
    assert outputs[True].extents[0] < turned_extent[0] - 0.05
    # the written normals still point out of the faces they shade
    squared = written[True]
    corners = squared.vertices[squared.faces]
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    face_normals /= np.linalg.norm(face_normals, axis=-1, keepdims=True)
    agreement = np.einsum("fk,fk->f", squared.vertex_normals[squared.faces].mean(1), face_normals)
    assert np.percentile(agreement, 5) > 0.9
