"""Cleanup, decimation and LODs: topology kept, budgets hit."""

import numpy as np
import pytest
import trimesh
from export_shapes import ball

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.cleanup import (
    cleanup,
    degenerate_face_mask,
    merge_close_vertices,
    orient_outward,
    remove_degenerate_faces,
    remove_floaters,
    smooth_vertex_normals,
)
from dreamsmith.exporters.decimate import decimate
from dreamsmith.exporters.lod import lod_meshes
from dreamsmith.representations.mesh import Mesh


def closed(mesh: Mesh) -> bool:
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).is_watertight


def volume(mesh: Mesh) -> float:
    return trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).volume


def with_sliver(mesh: Mesh) -> Mesh:
    """``mesh`` with the edge (a, b) of one face split at its midpoint m and a zero-area face (b, m, a)
    filling the crack: still closed, one degenerate face with three distinct vertices."""
    a, b, c = mesh.faces[0]
    midpoint = len(mesh.vertices)
    vertices = np.vstack([mesh.vertices, (mesh.vertices[a] + mesh.vertices[b]) / 2])
    faces = np.vstack([mesh.faces[1:], [[a, midpoint, c], [midpoint, b, c], [b, midpoint, a]]])
    return Mesh(vertices, faces)


def test_a_collinear_sliver_is_collapsed_without_opening_a_hole():
    mesh = with_sliver(ball(resolution=24))
    assert closed(mesh) and degenerate_face_mask(mesh.vertices, mesh.faces).sum() == 1
    cleaned = remove_degenerate_faces(mesh)
    assert degenerate_face_mask(cleaned.vertices, cleaned.faces).sum() == 0
    assert closed(cleaned) and cleaned.n_faces == mesh.n_faces - 2  # the sliver and its neighbour across the edge


def test_triangle_soup_is_welded_back_into_the_closed_surface():
    mesh = ball(resolution=24)
    soup = Mesh(mesh.vertices[mesh.faces].reshape(-1, 3), np.arange(3 * mesh.n_faces).reshape(-1, 3))
    welded = merge_close_vertices(soup)
    assert welded.n_vertices == mesh.n_vertices and welded.n_faces == mesh.n_faces and closed(welded)


def test_floaters_go_and_the_main_body_stays():
    main, floater = ball(0.35, 32), ball(0.05, 32)
    offset = floater.vertices + 0.4
    both = Mesh(np.vstack([main.vertices, offset]), np.vstack([main.faces, floater.faces + main.n_vertices]))
    kept = remove_floaters(both, keep_fraction=0.05)
    assert kept.n_faces == main.n_faces and np.abs(kept.vertices).max() < 0.36


def test_inverted_and_mixed_windings_end_outward():
    mesh = ball(resolution=24)
    rng = np.random.default_rng(0)
    flip = rng.random(mesh.n_faces) < 0.3
    mixed = mesh.faces.copy()
    mixed[flip] = mixed[flip][:, ::-1]
    for faces in (mesh.faces[:, ::-1], mixed):
        oriented = orient_outward(Mesh(mesh.vertices, faces))
        assert np.array_equal(oriented.faces, mesh.faces)
    assert volume(mesh) > 0


def test_smooth_normals_of_a_ball_point_away_from_its_centre():
    mesh = smooth_vertex_normals(ball(resolution=32))
    radial = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    assert np.allclose(np.linalg.norm(mesh.vertex_normals, axis=1), 1.0, atol=1e-5)
    assert (mesh.vertex_normals * radial).sum(1).min() > 0.98


def test_cleanup_keeps_a_clean_surface_as_it_is():
    mesh = ball(resolution=32)
    cleaned = cleanup(mesh)
    assert cleaned.n_faces == mesh.n_faces and closed(cleaned) and volume(cleaned) == pytest.approx(volume(mesh))


def test_decimation_hits_the_budget_and_stays_closed():
    mesh = cleanup(ball(resolution=48))
    assert mesh.n_faces > 9000
    for budget in (5000, 1000, 200):
        decimated = decimate(mesh, budget)
        assert abs(decimated.n_faces - budget) <= 0.05 * budget
        assert closed(decimated)
        assert volume(decimated) == pytest.approx(volume(mesh), rel=0.05)
        assert np.linalg.norm(decimated.vertices, axis=1).max() == pytest.approx(0.35, abs=0.01)


def test_a_budget_below_100_triangles_is_refused():
    with pytest.raises(DreamsmithError, match="below the minimum of 100"):
        decimate(ball(resolution=16), 99)


def test_each_lod_has_half_the_triangles_of_the_one_before():
    base = decimate(cleanup(ball(resolution=40)), 4000)
    levels = lod_meshes(base, 3)
    counts = [base.n_faces] + [level.n_faces for level in levels]
    assert counts[0] == 4000
    for before, after in zip(counts, counts[1:], strict=False):
        assert after / before == pytest.approx(0.5, abs=0.03)
    assert all(closed(level) for level in levels)
