"""Vertex normals split at a crease angle: hard edges stay hard, smooth surfaces stay smooth.

An indexed mesh carries one normal per vertex, so a hard edge needs its vertices split: the corners
around one position are grouped into smoothing groups (two faces sharing an edge whose normals differ
by less than the crease angle are in one group), and every group gets its own copy of the vertex.
"""

from __future__ import annotations

import math

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from dreamsmith.exporters.cleanup import face_normals, weld_index
from dreamsmith.representations.mesh import Mesh

_FALLBACK_NORMAL = np.array([0.0, 1.0, 0.0])


def smoothing_groups(vertices: np.ndarray, faces: np.ndarray, crease_angle_deg: float) -> np.ndarray:
    """``[F, 3]`` smoothing-group label of each face corner.

    Corners at one welded position share a label when their faces are linked by a chain of faces that
    share an edge there and bend by less than ``crease_angle_deg`` across it. Faces must be wound
    consistently (``cleanup.orient_outward``); non-manifold and boundary edges are hard.
    """
    weld = weld_index(vertices)
    welded = weld[faces]
    n_corners = faces.size
    if faces.shape[0] < 2:
        return np.arange(n_corners).reshape(-1, 3)
    normals = face_normals(vertices, faces)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    unit = np.where(length > 0, normals / np.maximum(length, 1e-300), 0.0)
    pairs, edges = trimesh.graph.face_adjacency(welded, return_edges=True)
    cosine = np.einsum("pk,pk->p", unit[pairs[:, 0]], unit[pairs[:, 1]])
    smooth = cosine >= math.cos(math.radians(crease_angle_deg)) - 1e-9
    pairs, edges = pairs[smooth], edges[smooth]
    links = []
    for end in range(2):
        position = edges[:, end]
        corner_a = pairs[:, 0] * 3 + (welded[pairs[:, 0]] == position[:, None]).argmax(axis=1)
        corner_b = pairs[:, 1] * 3 + (welded[pairs[:, 1]] == position[:, None]).argmax(axis=1)
        links.append((corner_a, corner_b))
    rows = np.concatenate([a for a, _ in links])
    cols = np.concatenate([b for _, b in links])
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_corners, n_corners))
    return connected_components(graph, directed=False)[1].reshape(-1, 3)


def crease_vertex_normals(mesh: Mesh, crease_angle_deg: float) -> Mesh:
    """``mesh`` with unit vertex normals split where faces meet at more than ``crease_angle_deg``.

    Each smoothing group's normal is the area-weighted mean of its faces' normals. A vertex whose
    corners fall into several groups is copied once per group (position, UV and colour copied, so the
    texture and welded-position topology are unchanged); vertices split at UV seams in one group get
    the same normal, so seams do not show. Faces keep their order and winding; a mesh without hard
    edges keeps its vertex order. 180 degrees smooths every manifold edge; 0 shades every face flat.
    """
    if mesh.n_faces == 0:
        return mesh.copy(vertex_normals=np.zeros((mesh.n_vertices, 3), dtype=np.float32))
    groups = smoothing_groups(mesh.vertices, mesh.faces, crease_angle_deg).reshape(-1)
    normals = face_normals(mesh.vertices, mesh.faces)  # length = 2 x area: area weighting
    n_groups = int(groups.max()) + 1
    summed = np.stack([np.bincount(groups, np.repeat(normals[:, k], 3), n_groups) for k in range(3)], axis=1)
    length = np.linalg.norm(summed, axis=-1, keepdims=True)
    # A group whose faces cancel out (a fin) or have no area still needs a unit normal for the validators.
    group_normal = np.where(length > 1e-20, summed / np.maximum(length, 1e-30), _FALLBACK_NORMAL)

    corner_vertex = mesh.faces.reshape(-1)
    keys = np.stack([corner_vertex, groups], axis=1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    source, group = unique[:, 0], unique[:, 1]
    return mesh.copy(
        vertices=mesh.vertices[source],
        faces=inverse.reshape(-1, 3),
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[source],
        vertex_normals=group_normal[group].astype(np.float32),
        uvs=None if mesh.uvs is None else mesh.uvs[source],
    )
