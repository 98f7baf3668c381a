"""Levels of detail: each level about half the triangles of the one before, decimated from the base
geometry (not from the previous level, so errors do not accumulate)."""

from __future__ import annotations

import math

from dreamsmith.exporters.cleanup import cleanup
from dreamsmith.exporters.decimate import MIN_TRIANGLES, decimate
from dreamsmith.representations.mesh import Mesh


def max_lod_levels(n_triangles: int, ratio: float = 0.5) -> int:
    """How many levels ``n_triangles`` allows: each level's budget ``n_triangles * ratio**k`` must keep
    at least ``MIN_TRIANGLES`` (below, every level would be the same smallest mesh)."""
    if n_triangles < MIN_TRIANGLES:
        return 0
    return int(math.floor(math.log(MIN_TRIANGLES / n_triangles) / math.log(ratio) + 1e-9))


def lod_budgets(n_triangles: int, levels: int, ratio: float = 0.5) -> list[int]:
    """Triangle budgets ``n_triangles * ratio**k`` of levels 1..``levels``, as many as ``n_triangles`` allows."""
    levels = min(levels, max_lod_levels(n_triangles, ratio))
    return [int(round(n_triangles * ratio**level)) for level in range(1, levels + 1)]


def lod_meshes(base: Mesh, levels: int, ratio: float = 0.5) -> list[Mesh]:
    """Geometry of levels 1..``levels`` (cleaned, smooth normals, no UVs yet) from the level-0 ``base``;
    fewer when ``base`` has too few triangles (see ``max_lod_levels``)."""
    return [cleanup(decimate(base, budget)) for budget in lod_budgets(base.n_faces, levels, ratio)]


def lod_texture_size(texture_size: int, level: int, smallest: int = 128) -> int:
    """Texture side of a level: halved per level (a quarter of the texels, as the level has fewer
    pixels on screen), never below ``smallest``."""
    return max(texture_size >> level, min(smallest, texture_size))
