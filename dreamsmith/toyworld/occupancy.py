"""Occupancy of a closed triangle mesh on a regular grid: which cell centres lie inside it.

Ray parity along each of the three axes (every column of cells is one ray; a point is inside when
an odd number of surface crossings lie below it), then a majority vote of the three axes, so a
small hole or a stray sheet in the mesh spoils at most one axis's vote. The columns are shifted by
a small irrational fraction of a cell so no ray runs exactly through a vertex or an edge of a
marching-cubes mesh (whose vertices lie on grid lines).
"""

from __future__ import annotations

import numpy as np

_JITTER = (1e-3 * (5**0.5 - 1) / 2, 1e-3 * (2**0.5 - 1))
"""Offsets of the rays (in cells) off the cell centres across a column."""


def grid_centres(bound: float, resolution: int) -> np.ndarray:
    """Coordinates ``[resolution]`` of the cell centres of a grid spanning [-bound, bound] per axis."""
    cell = 2.0 * bound / resolution
    return -bound + (np.arange(resolution) + 0.5) * cell


def _axis_parity(vertices: np.ndarray, faces: np.ndarray, axis: int, bound: float, resolution: int) -> np.ndarray:
    """Parity occupancy ``[R, R, R]`` (indexed x, y, z) from rays along ``axis``."""
    u_axis, v_axis = [a for a in range(3) if a != axis]
    cell = 2.0 * bound / resolution
    tri = vertices[faces]  # [F, 3 corners, 3]
    # grid coordinates of the corners across the rays, relative to the (jittered) first ray
    uv = (tri[:, :, [u_axis, v_axis]] + bound) / cell - 0.5 - np.asarray(_JITTER)
    lo = np.clip(np.ceil(uv.min(axis=1)), 0, resolution).astype(np.int64)
    hi = np.clip(np.floor(uv.max(axis=1)), -1, resolution - 1).astype(np.int64)
    span = np.maximum(hi - lo + 1, 0)
    counts = span[:, 0] * span[:, 1]
    face = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    i = lo[face, 0] + offset // np.maximum(span[face, 1], 1)
    j = lo[face, 1] + offset % np.maximum(span[face, 1], 1)
    corners = uv[face]  # [K, 3, 2]
    point = np.stack([i, j], axis=-1).astype(np.float64)
    # barycentric coordinates of the ray in the projected triangle
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    valid = np.abs(det) > 1e-12
    det = np.where(valid, det, 1.0)
    w1 = ((point[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (point[:, 1] - a[:, 1])) / det
    w2 = ((b[:, 0] - a[:, 0]) * (point[:, 1] - a[:, 1]) - (point[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
    hit = valid & (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
    depth = tri[face, :, axis]
    along = (1 - w1 - w2) * depth[:, 0] + w1 * depth[:, 1] + w2 * depth[:, 2]
    i, j, along = i[hit], j[hit], along[hit]
    # a crossing at `along` flips the parity of every cell whose centre lies beyond it
    first_beyond = np.clip(np.ceil((along + bound) / cell - 0.5), 0, resolution).astype(np.int64)
    flips = np.zeros((resolution, resolution, resolution + 1), dtype=np.int64)
    np.add.at(flips, (i, j, first_beyond), 1)
    parity = (np.cumsum(flips, axis=-1)[..., :resolution] % 2).astype(bool)  # [u, v, along]
    order = {u_axis: 0, v_axis: 1, axis: 2}
    return np.transpose(parity, [order[0], order[1], order[2]])


def mesh_occupancy(vertices: np.ndarray, faces: np.ndarray, bound: float, resolution: int) -> np.ndarray:
    """Inside-ness ``[R, R, R]`` bool (indexed x, y, z) of the cell centres of a grid over
    [-bound, bound]^3 (see ``grid_centres``) for a closed mesh (``vertices [V, 3]``, ``faces [F, 3]``)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return np.zeros((resolution,) * 3, dtype=bool)
    votes = sum(_axis_parity(vertices, faces, axis, bound, resolution).astype(np.int8) for axis in range(3))
    return votes >= 2
