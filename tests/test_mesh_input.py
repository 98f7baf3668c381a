"""A user's mesh for `dreamsmith texture`: read once, decimated when huge, non-manifold edges counted."""

from __future__ import annotations

import os

import numpy as np
import pytest
import trimesh

from dreamsmith.engine import mesh_input
from dreamsmith.engine.mesh_input import non_manifold_edges, read_user_mesh
from dreamsmith.errors import DreamsmithError
from dreamsmith.representations.mesh import Mesh

FIN_VERTICES = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=np.float32)
FIN_FACES = np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])  # three triangles on the edge 0-1


def test_edges_shared_by_more_than_two_faces_are_counted_by_position_not_by_index():
    assert non_manifold_edges(Mesh(FIN_VERTICES, FIN_FACES)) == 1
    sphere = trimesh.creation.icosphere(subdivisions=1)
    assert non_manifold_edges(Mesh(sphere.vertices, sphere.faces)) == 0
    split = Mesh(sphere.vertices[sphere.faces].reshape(-1, 3), np.arange(sphere.faces.size).reshape(-1, 3))
    assert non_manifold_edges(split) == 0  # UV seams split vertices: still manifold
    doubled = Mesh(sphere.vertices, np.concatenate([sphere.faces, sphere.faces[:1]]))
    assert non_manifold_edges(doubled) == 3  # a duplicated face puts a third face on its three edges


def test_a_huge_mesh_is_decimated_to_max_faces_with_a_note(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces
    sphere.export(tmp_path / "sphere.glb")
    read = read_user_mesh(tmp_path / "sphere.glb", 300)
    assert 250 <= read.mesh.n_faces <= 300 and read.mesh.uvs is None
    assert len(read.notes) == 1 and "1280 faces, more than uv_texture.max_faces=300: decimated to" in read.notes[0]
    assert np.abs(np.linalg.norm(read.mesh.vertices, axis=1) - 1).max() < 0.05  # still the sphere
    assert read_user_mesh(tmp_path / "sphere.glb", 2000).notes == ()


def test_a_non_manifold_mesh_is_read_with_a_warning(tmp_path):
    trimesh.Trimesh(FIN_VERTICES, FIN_FACES, process=False).export(tmp_path / "fin.glb")
    read = read_user_mesh(tmp_path / "fin.glb", 1000)
    assert read.mesh.n_faces == 3
    assert read.notes == (f"warning: {(tmp_path / 'fin.glb').resolve()} is not manifold (1 edges shared by more "
                          "than two faces): painted as it is; seams may show along those edges",)


def test_non_finite_positions_are_refused_in_one_line(tmp_path):
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    with pytest.raises(DreamsmithError, match="not finite numbers") as error:
        read_user_mesh(tmp_path / "nan.obj", 1000)
    assert "\n" not in str(error.value)


def test_the_file_is_read_once_until_it_changes(tmp_path, monkeypatch):
    sphere = trimesh.creation.icosphere(subdivisions=1)
    sphere.export(tmp_path / "sphere.glb")
    reads = []
    load = trimesh.load
    monkeypatch.setattr(trimesh, "load", lambda *args, **kwargs: reads.append(args[0]) or load(*args, **kwargs))
    mesh_input._read.cache_clear()
    first = read_user_mesh(tmp_path / "sphere.glb", 1000)
    assert read_user_mesh(str(tmp_path / "sphere.glb"), 1000) is first and len(reads) == 1
    trimesh.creation.icosphere(subdivisions=2).export(tmp_path / "sphere.glb")
    stat = os.stat(tmp_path / "sphere.glb")
    os.utime(tmp_path / "sphere.glb", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert read_user_mesh(tmp_path / "sphere.glb", 1000).mesh.n_faces == 320 and len(reads) == 2
