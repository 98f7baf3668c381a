"""Mesh cleanup before export: floaters, degenerate faces, duplicate vertices, winding, normals.

Every function takes a ``Mesh`` and returns a new one; per-vertex attributes (colours, normals, UVs)
follow their vertices.
"""

from __future__ import annotations

import numpy as np
import trimesh

from dreamsmith.representations.mesh import Mesh


def keep_faces(mesh: Mesh, faces: np.ndarray) -> Mesh:
    """``mesh`` with only ``faces [F', 3]`` (indices into its vertices); unreferenced vertices are dropped."""
    used = np.unique(faces)
    remap = np.full(mesh.n_vertices, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return mesh.copy(
        vertices=mesh.vertices[used],
        faces=remap[faces].reshape(-1, 3),
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[used],
        vertex_normals=None if mesh.vertex_normals is None else mesh.vertex_normals[used],
        uvs=None if mesh.uvs is None else mesh.uvs[used],
    )


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Face normals ``[F, 3]`` (float64, counter-clockwise winding) of length twice the face's area."""
    corners = vertices[faces].astype(np.float64)
    return np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Triangle areas ``[F]`` in square metres."""
    return 0.5 * np.linalg.norm(face_normals(vertices, faces), axis=-1)


def degenerate_face_mask(vertices: np.ndarray, faces: np.ndarray, min_area: float = 1e-12) -> np.ndarray:
    """``[F]`` True for faces with a repeated vertex index or (near) zero area."""
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    return repeated | (face_areas(vertices, faces) <= min_area)


def remove_degenerate_faces(mesh: Mesh, min_area: float = 1e-12, max_passes: int = 8) -> Mesh:
    """Remove faces with a repeated vertex or an area of at most ``min_area`` m² without opening holes:
    a sliver with three distinct vertices has its shortest edge collapsed (its neighbour across that
    edge collapses with it), so a closed surface stays closed."""
    faces = mesh.faces
    for _ in range(max_passes):
        bad = degenerate_face_mask(mesh.vertices, faces, min_area)
        if not bad.any():
            break
        target = np.arange(mesh.n_vertices)
        for face in faces[bad]:
            if len(set(face.tolist())) < 3:
                continue
            corners = mesh.vertices[face].astype(np.float64)
            lengths = np.linalg.norm(corners - corners[[1, 2, 0]], axis=-1)
            keep, drop = face[int(lengths.argmin())], face[(int(lengths.argmin()) + 1) % 3]
            if target[keep] == keep and target[drop] == drop:  # one collapse per vertex per pass
                target[drop] = keep
        faces = target[faces]
        repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
        faces = faces[~repeated]
    return keep_faces(mesh, faces[~degenerate_face_mask(mesh.vertices, faces, min_area)])


def weld_index(vertices: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """``[V]`` index of a representative vertex per position (vertices closer than ``tolerance``, on a
    grid of that size, share one); tolerance 0 welds exactly equal positions only."""
    key = vertices if tolerance <= 0 else np.round(vertices / tolerance)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def merge_close_vertices(mesh: Mesh, tolerance: float = 1e-6) -> Mesh:
    """Merge vertices closer than ``tolerance`` metres (vertices with different UVs stay apart: a seam);
    faces that collapse are dropped."""
    if mesh.n_vertices == 0:
        return mesh
    key = np.round(mesh.vertices / tolerance)
    if mesh.uvs is not None:
        key = np.concatenate([key, np.round(mesh.uvs / 1e-6)], axis=1)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    merged = mesh.copy(faces=first[inverse.reshape(-1)][mesh.faces])
    repeated = degenerate_face_mask(merged.vertices, merged.faces, min_area=-1.0)
    return keep_faces(merged, merged.faces[~repeated])


def connected_component_labels(faces: np.ndarray, weld: np.ndarray | None = None) -> np.ndarray:
    """``[F]`` component label of each face (faces sharing an edge are connected); ``weld`` maps vertices
    split at UV seams to one representative so seams do not cut components."""
    welded = faces if weld is None else weld[faces]
    return trimesh.graph.connected_component_labels(trimesh.graph.face_adjacency(welded), len(faces))


def remove_floaters(mesh: Mesh, keep_fraction: float = 0.05) -> Mesh:
    """Drop connected components with fewer faces than ``keep_fraction`` of the largest one."""
    if mesh.n_faces == 0 or keep_fraction <= 0:
        return mesh
    labels = connected_component_labels(mesh.faces, weld_index(mesh.vertices))
    counts = np.bincount(labels)
    return keep_faces(mesh, mesh.faces[counts[labels] >= keep_fraction * counts.max()])


def orient_outward(mesh: Mesh) -> Mesh:
    """Consistent winding inside each connected component (trimesh's traversal), then each component
    flipped where its faces point inwards: where ``sum(n_f · (c_f - c))`` over its faces (face normal
    times twice the area, centroid, component centre) is negative. For a closed surface that sum is six
    times its signed volume; for an open one it says whether the faces look away from its centre."""
    if mesh.n_faces == 0:
        return mesh
    weld = weld_index(mesh.vertices)
    welded = trimesh.Trimesh(mesh.vertices, weld[mesh.faces], process=False)
    trimesh.repair.fix_winding(welded)
    wound = np.asarray(welded.faces)
    flipped = (wound != weld[mesh.faces]).any(axis=1)
    labels = connected_component_labels(wound)
    corners = mesh.vertices[wound].astype(np.float64)
    centroid = corners.mean(axis=1)
    n_labels = labels.max() + 1
    counts = np.bincount(labels, minlength=n_labels)[:, None]
    centre = np.stack([np.bincount(labels, centroid[:, k], n_labels) for k in range(3)], axis=1) / counts
    cross = face_normals(mesh.vertices, wound)
    outward = np.bincount(labels, np.einsum("fk,fk->f", cross, centroid - centre[labels]), n_labels)
    flipped ^= (outward < 0)[labels]
    faces = mesh.faces.copy()
    faces[flipped] = faces[flipped][:, ::-1]
    return mesh.copy(faces=faces)


def smooth_vertex_normals(mesh: Mesh) -> Mesh:
    """Area-weighted unit vertex normals; vertices split at UV seams get the same normal (no shading seam)."""
    face_normal = face_normals(mesh.vertices, mesh.faces)  # length = 2 × area
    weld = weld_index(mesh.vertices)
    summed = np.zeros((mesh.n_vertices, 3))
    for corner in range(3):
        np.add.at(summed, weld[mesh.faces[:, corner]], face_normal)
    normals = summed[weld]
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    # A vertex whose faces cancel out (a fin) still needs a unit normal for the validator.
    normals = np.where(length > 1e-20, normals / np.maximum(length, 1e-30), np.array([0.0, 1.0, 0.0]))
    return mesh.copy(vertex_normals=normals.astype(np.float32))


def repair(mesh: Mesh, keep_fraction: float = 0.05, merge_tolerance: float = 1e-6) -> Mesh:
    """What decimation needs first: degenerate faces, close vertices and floaters removed."""
    mesh = remove_degenerate_faces(mesh)
    mesh = merge_close_vertices(mesh, merge_tolerance)
    mesh = remove_degenerate_faces(mesh)
    return remove_floaters(mesh, keep_fraction)


def cleanup(mesh: Mesh, keep_fraction: float = 0.05, merge_tolerance: float = 1e-6) -> Mesh:
    """The cleanup pass: degenerate faces, close vertices, floaters, outward winding, smooth normals."""
    return smooth_vertex_normals(orient_outward(repair(mesh, keep_fraction, merge_tolerance)))
