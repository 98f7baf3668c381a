"""Mesh occupancy by three-axis ray parity, on meshes whose volume is known."""

import numpy as np
import pytest
import trimesh

from dreamsmith.toyworld.occupancy import grid_centres, mesh_occupancy

BOUND, RES = 0.75, 96
CELL_VOLUME = (2 * BOUND / RES) ** 3


def sphere_truth(radius: float) -> np.ndarray:
    axis = grid_centres(BOUND, RES)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    return x**2 + y**2 + z**2 < radius**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_a_box_of_twelve_large_triangles_fills_its_volume():
    box = trimesh.creation.box(extents=[0.5, 0.3, 0.4])
    inside = mesh_occupancy(box.vertices, box.faces, BOUND, RES)
    assert inside.sum() * CELL_VOLUME == pytest.approx(0.5 * 0.3 * 0.4, rel=0.06)
    axis = grid_centres(BOUND, RES)
    assert inside[np.abs(axis) < 0.24][:, np.abs(axis) < 0.14][:, :, np.abs(axis) < 0.19].all()
    assert not inside[np.abs(axis) > 0.26].any()


def test_a_sphere_matches_its_analytic_occupancy_whatever_its_winding():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.45)
    inside = mesh_occupancy(sphere.vertices, sphere.faces, BOUND, RES)
    flipped = mesh_occupancy(sphere.vertices, sphere.faces[:, ::-1], BOUND, RES)
    assert iou(inside, sphere_truth(0.45)) > 0.98
    assert (inside == flipped).all()


def test_a_small_hole_in_the_surface_spoils_no_cell_far_from_it():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.45)
    holed = sphere.faces[np.linalg.norm(sphere.triangles_center - [0.45, 0, 0], axis=1) > 0.05]
    assert len(holed) < len(sphere.faces)
    inside = mesh_occupancy(sphere.vertices, holed, BOUND, RES)
    assert iou(inside, mesh_occupancy(sphere.vertices, sphere.faces, BOUND, RES)) > 0.999


def test_the_hole_of_a_ring_is_empty():
    ring = trimesh.creation.annulus(r_min=0.2, r_max=0.44, height=0.24)
    inside = mesh_occupancy(ring.vertices, ring.faces, BOUND, RES)
    assert inside.sum() * CELL_VOLUME == pytest.approx(np.pi * (0.44**2 - 0.2**2) * 0.24, rel=0.06)
    centre = RES // 2
    assert not inside[centre - 8:centre + 8, centre - 8:centre + 8, centre - 8:centre + 8].any()


def test_no_faces_is_empty():
    assert not mesh_occupancy(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), BOUND, 16).any()
