"""Snapping an asset's yaw to the world grid.

Score distillation fixes an object's shape but not always its turn about the vertical: a prior that
does not read the camera's azimuth (the embedded one, for cubes) leaves a box at any yaw, and a game
asset is expected to stand square to the level grid. The turn that squares it is the one that lays
the footprint's smallest bounding rectangle along x and z; that rectangle has a side on an edge of
the footprint's convex hull (Freeman and Shapira 1975), so the hull's edge directions are the only
candidates. At most 45° either way, so what faced +Z still faces closest to +Z.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import ConvexHull, QhullError

MIN_AREA_GAIN = 0.02
"""A footprint whose smallest rectangle is less than this fraction smaller than its axis-aligned one
keeps its yaw: round footprints (spheres, cylinders, tori) have no preferred turn, and the facets of
a marching-cubes surface would otherwise turn them at random."""


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """2-D points ``[N, 2]`` as (x, z) turned by ``angle`` radians (x' = x cos − z sin, z' = x sin + z cos)."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _box_area(points: np.ndarray, angle: float) -> float:
    turned = _rotate(points, angle)
    extent = turned.max(0) - turned.min(0)
    return float(extent[0] * extent[1])


def footprint_yaw(vertices: np.ndarray, min_gain: float = MIN_AREA_GAIN) -> float:
    """The turn (radians, in the (x, z) plane as ``_rotate`` applies it, |angle| ≤ π/4) that puts the
    smallest bounding rectangle of ``vertices``'s footprint on the x and z axes; 0 when that rectangle
    is less than ``min_gain`` smaller than the axis-aligned one, or the footprint has no area."""
    footprint = np.asarray(vertices, dtype=np.float64)[:, [0, 2]]
    try:
        hull = footprint[ConvexHull(footprint).vertices]
    except (QhullError, ValueError):  # fewer than 3 points, or all on a line
        return 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    directions = np.arctan2(edges[:, 1], edges[:, 0]) % (math.pi / 2)
    candidates = -np.where(directions > math.pi / 4, directions - math.pi / 2, directions)
    areas = np.array([_box_area(hull, angle) for angle in candidates])
    aligned = _box_area(hull, 0.0)
    best = int(np.argmin(areas))
    if aligned <= 0 or areas[best] > (1.0 - min_gain) * aligned:
        return 0.0
    return float(candidates[best])


def yaw_matrix(angle: float) -> np.ndarray:
    """``[3, 3]`` rotation about +Y that turns (x, z) as ``_rotate`` does (row vectors: ``v @ M``)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
