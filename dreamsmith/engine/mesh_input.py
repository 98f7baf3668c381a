"""A user's mesh file read as fixed geometry for a texture stage: one-line refusals for bad input.

Read once per process: the command line checks the file before any model loads, and the stage that
paints it gets the same result (keyed by the file's path, size and modification time).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.representations.mesh import Mesh


@dataclass(frozen=True)
class UserMesh:
    """The mesh to paint and one line per thing the user should know about it (decimated, non-manifold)."""

    mesh: Mesh
    notes: tuple[str, ...] = ()


def read_user_mesh(path: Path | str, max_faces: int) -> UserMesh:
    """The GLB/OBJ at ``path`` as a ``Mesh`` with its own UVs when it has one per vertex (else None), and its
    colours when it has them (vertex colours, or a base-colour texture read through those UVs).

    Vertices and faces are read without merging or reordering (``process=False``), so an export that
    keeps the geometry writes back exactly what was read. Refused in one line: a missing file, one that
    does not parse, no faces, faces naming missing vertices, non-finite positions. A mesh over
    ``max_faces`` is decimated to it (its UVs do not survive: the stage unwraps it again); a
    non-manifold one (edges shared by more than two faces) is painted as it is. Both say so in ``notes``.
    """
    path = Path(path)
    if not path.is_file():
        raise DreamsmithError(f"mesh file {path} does not exist; pass a .glb or .obj file")
    stat = path.stat()
    return _read(path.resolve(), stat.st_size, stat.st_mtime_ns, max_faces)


def load_fixed_mesh(path: Path | str, max_faces: int) -> Mesh:
    """The mesh of :func:`read_user_mesh` alone."""
    return read_user_mesh(path, max_faces).mesh


@functools.lru_cache(maxsize=1)
def _read(path: Path, size: int, mtime_ns: int, max_faces: int) -> UserMesh:
    import trimesh

    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # trimesh raises anything from its many parsers
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DreamsmithError(f"{path} is not a mesh trimesh can read ({detail[:120]}); "
                              "pass a .glb or .obj file") from None
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))))
    if faces.size == 0:
        raise DreamsmithError(f"{path} has no faces: nothing to texture; pass a triangle mesh")
    vertices = np.asarray(loaded.vertices)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DreamsmithError(f"{path} has faces naming vertices it does not have; repair it and try again")
    if not np.isfinite(vertices).all():
        raise DreamsmithError(f"{path} has vertex positions that are not finite numbers; repair it and try again")
    uvs = getattr(loaded.visual, "uv", None)
    uvs = None if uvs is None or len(uvs) != len(vertices) else np.asarray(uvs, dtype=np.float32)
    vertex_colors, texture = _colours(loaded.visual, len(vertices), uvs is not None)
    mesh, notes = Mesh(vertices, faces, uvs=uvs, vertex_colors=vertex_colors, base_color_texture=texture), []
    if mesh.n_faces > max_faces:
        mesh = _decimated(mesh, max_faces, path)
        notes.append(f"{path} has {len(faces)} faces, more than uv_texture.max_faces={max_faces}: decimated to "
                     f"{mesh.n_faces} (its UVs are unwrapped again); --set uv_texture.max_faces=N keeps more")
    shared = non_manifold_edges(mesh)
    if shared:
        notes.append(f"warning: {path} is not manifold ({shared} edges shared by more than two faces): painted as "
                     "it is; seams may show along those edges")
    return UserMesh(mesh, tuple(notes))


def _colours(visual: Any, n_vertices: int, has_uvs: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(vertex colours ``[V, 3]``, base-colour texture ``[H, W, 3]``), sRGB in [0, 1], as the file has them
    (a texture only with UVs to read it through); None for what it lacks."""
    if getattr(visual, "kind", None) == "vertex":
        colours = np.asarray(visual.vertex_colors)
        if len(colours) == n_vertices:
            return colours[:, :3].astype(np.float32) / 255.0, None
    material = getattr(visual, "material", None)
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is not None and has_uvs:
        return None, np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return None, None


def texture_mesh_notes(stages: list[Any]) -> list[str]:
    """The notes on every texture stage's mesh file (reading it: a bad one is refused here)."""
    return [note for stage in stages if stage.representation == "texture" and stage.uv_texture.mesh is not None
            for note in read_user_mesh(stage.uv_texture.mesh, stage.uv_texture.max_faces).notes]


def _decimated(mesh: Mesh, max_faces: int, path: Path) -> Mesh:
    from dreamsmith.exporters.decimate import MIN_TRIANGLES, decimate

    if max_faces < MIN_TRIANGLES:
        raise DreamsmithError(f"{path} has {mesh.n_faces} faces, more than uv_texture.max_faces={max_faces}, which "
                              f"is too few to decimate to (at least {MIN_TRIANGLES}); raise it with "
                              "--set uv_texture.max_faces=N")
    return decimate(mesh, max_faces)


def non_manifold_edges(mesh: Mesh) -> int:
    """How many edges (vertices merged by position, so UV seams do not count) more than two faces share."""
    _, position = np.unique(mesh.vertices, axis=0, return_inverse=True)
    corners = position.reshape(-1)[mesh.faces]
    edges = np.sort(corners[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts > 2).sum())
