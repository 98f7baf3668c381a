"""Levels of detail: each level about half the triangles of the one before, decimated from the base
geometry (not from the previous level, so errors do not accumulate)."""

from __future__ import annotations

from dreamsmith.exporters.cleanup import cleanup
from dreamsmith.exporters.decimate import MIN_TRIANGLES, decimate
from dreamsmith.representations.mesh import Mesh


def lod_budgets(n_triangles: int, levels: int, ratio: float = 0.5) -> list[int]:
    """Triangle budgets of levels 1..``levels``: ``n_triangles * ratio**k``, at least ``MIN_TRIANGLES``."""
    return [max(int(round(n_triangles * ratio**level)), MIN_TRIANGLES) for level in range(1, levels + 1)]


def lod_meshes(base: Mesh, levels: int, ratio: float = 0.5) -> list[Mesh]:
    """Geometry of levels 1..``levels`` (cleaned, smooth normals, no UVs yet) from the level-0 ``base``."""
    return [cleanup(decimate(base, budget)) for budget in lod_budgets(base.n_faces, levels, ratio)]


def lod_texture_size(texture_size: int, level: int, smallest: int = 128) -> int:
    """Texture side of a level: halved per level (a quarter of the texels, as the level has fewer
    pixels on screen), never below ``smallest``."""
    return max(texture_size >> level, min(smallest, texture_size))
