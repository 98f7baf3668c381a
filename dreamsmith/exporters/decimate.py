"""Quadric-error decimation to a triangle budget (Garland & Heckbert 1997, via fast-simplification).

Decimation runs on geometry before the UV unwrap, so there are no UV seams to keep yet; the quadric
error keeps creases and the silhouette, and a closed surface stays closed.
"""

from __future__ import annotations

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.representations.mesh import Mesh

MIN_TRIANGLES = 100
"""The smallest budget accepted: below it no asset keeps its shape."""


def check_budget(max_triangles: int) -> None:
    """A budget below ``MIN_TRIANGLES`` is a user's mistake."""
    if max_triangles < MIN_TRIANGLES:
        raise DreamsmithError(f"--max-triangles {max_triangles} is below the minimum of {MIN_TRIANGLES}; ask for more")


def decimate(mesh: Mesh, max_triangles: int, aggressiveness: float = 7.0) -> Mesh:
    """``mesh`` simplified to about ``max_triangles`` faces (unchanged when already within budget).

    Returns geometry only (vertices, faces): colours, normals and UVs of the input do not survive a
    collapse; the caller recomputes normals and bakes the texture afterwards.
    """
    check_budget(max_triangles)
    if mesh.n_faces <= max_triangles:
        return mesh
    import fast_simplification

    vertices, faces = fast_simplification.simplify(
        np.ascontiguousarray(mesh.vertices, dtype=np.float32),
        np.ascontiguousarray(mesh.faces, dtype=np.int64),
        target_count=max_triangles,
        agg=aggressiveness,
    )
    return Mesh(vertices, faces)
