"""A user's mesh file read as fixed geometry for a texture stage: one-line refusals for bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.representations.mesh import Mesh


def load_fixed_mesh(path: Path | str, max_faces: int) -> Mesh:
    """The GLB/OBJ at ``path`` as a ``Mesh`` with its own UVs when it has one per vertex (else None).

    Vertices and faces are read without merging or reordering (``process=False``), so an export that
    keeps the geometry writes back exactly what was read.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise DreamsmithError(f"mesh file {path} does not exist; pass a .glb or .obj file")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as error:  # trimesh raises anything from its many parsers
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DreamsmithError(f"{path} is not a mesh trimesh can read ({detail[:120]}); "
                              "pass a .glb or .obj file") from None
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))))
    if faces.size == 0:
        raise DreamsmithError(f"{path} has no faces: nothing to texture; pass a triangle mesh")
    if len(faces) > max_faces:
        raise DreamsmithError(f"{path} has {len(faces)} faces, more than uv_texture.max_faces={max_faces}; "
                              "decimate it first or raise the limit with --set uv_texture.max_faces=N")
    uvs = getattr(loaded.visual, "uv", None)
    if uvs is not None and len(uvs) != len(loaded.vertices):
        uvs = None
    return Mesh(loaded.vertices, faces, uvs=None if uvs is None else np.asarray(uvs, dtype=np.float32))
