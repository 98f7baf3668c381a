"""Tetrahedral grids generated at any resolution (no downloaded tet files).

A cube of ``resolution^3`` cells is split cell by cell into 6 tetrahedra by the Kuhn (Freudenthal)
triangulation: every tetrahedron follows a monotone path from the cell's (0,0,0) corner to its
(1,1,1) corner, one axis at a time. All cells share the same main diagonal, so the triangulations
of two neighbouring cells agree on their common face and the grid is a conforming tetrahedral mesh
(which marching tetrahedra needs for a watertight surface).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .marching_tets import TET_EDGES


def _kuhn_corners() -> Tensor:
    """``[6, 4]`` corner indices (bit 0 = +x, bit 1 = +y, bit 2 = +z) of the 6 tets of a unit cube."""
    tets = []
    for axes in itertools.permutations(range(3)):
        path = [0, 1 << axes[0], (1 << axes[0]) | (1 << axes[1]), 7]
        offsets = torch.tensor([[(c >> a) & 1 for a in range(3)] for c in path], dtype=torch.float64)
        if torch.linalg.det(offsets[1:] - offsets[0]) < 0:
            path[2], path[3] = path[3], path[2]  # positive orientation for every tet
        tets.append(path)
    return torch.tensor(tets, dtype=torch.int64)


def tet_grid(resolution: int, bound: float, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """A conforming tetrahedral grid of the cube ``[-bound, bound]^3``.

    Returns vertices ``[(resolution+1)^3, 3]`` float32 (vertex (i, j, k) at index
    ``(i * (resolution+1) + j) * (resolution+1) + k``, x from i) and tets ``[6 * resolution^3, 4]``
    int64, each positively oriented (``det(v1-v0, v2-v0, v3-v0) > 0``).
    """
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    n = resolution + 1
    axis = torch.linspace(-bound, bound, n, dtype=torch.float32, device=device)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    vertices = torch.stack([x, y, z], dim=-1).reshape(-1, 3)

    cells = torch.arange(resolution, device=device)
    i, j, k = (c.reshape(-1) for c in torch.meshgrid(cells, cells, cells, indexing="ij"))
    corner_bits = torch.arange(8, device=device)
    corner_index = ((i[:, None] + (corner_bits & 1)) * n + (j[:, None] + ((corner_bits >> 1) & 1))) * n + (
        k[:, None] + ((corner_bits >> 2) & 1)
    )  # [cells, 8]
    tets = corner_index[:, _kuhn_corners().to(device)]  # [cells, 6, 4]
    return vertices, tets.reshape(-1, 4)


def grid_edges(tets: Tensor) -> Tensor:
    """The unique edges ``[E, 2]`` (lower index first) of tetrahedra ``[T, 4]``."""
    edges = tets[:, torch.tensor(TET_EDGES, device=tets.device)].reshape(-1, 2)
    return torch.unique(torch.sort(edges, dim=1).values, dim=0)


def tet_grid_edges(resolution: int, device: torch.device | str = "cpu") -> Tensor:
    """``grid_edges`` of ``tet_grid(resolution)``, in the same (sorted) order, without its ``[6T, 2]``
    temporaries (gigabytes at resolution 128). Every Kuhn tet follows a monotone path through its
    cell, so the grid's edges are exactly the pairs (v, v + d) for the 7 nonzero cell-corner offsets
    d that stay inside the grid; listed by v, then by d ascending, they are already sorted."""
    n = resolution + 1
    steps = torch.tensor([(dx, dy, dz) for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)][1:], device=device)
    offsets = (steps[:, 0] * n + steps[:, 1]) * n + steps[:, 2]  # ascending: dz, dy, dy+dz, dx, ...
    index = torch.arange(n**3, device=device)
    i, j, k = index // (n * n), (index // n) % n, index % n
    fits = ((i[:, None] + steps[:, 0] < n) & (j[:, None] + steps[:, 1] < n) & (k[:, None] + steps[:, 2] < n))
    lower = index[:, None].expand(-1, 7)[fits]
    return torch.stack([lower, lower + offsets.expand(n**3, -1)[fits]], dim=1)


def enclosed(empty: np.ndarray) -> np.ndarray:
    """Cells of a dense boolean grid that are ``empty`` and that no axis-aligned path of empty cells links
    to the grid's boundary: bubbles enclosed by what is not empty."""
    return ndimage.binary_fill_holes(~empty) & empty


def cavities(outside: Tensor, resolution: int) -> Tensor:
    """Outside vertices ``[N]`` of a ``tet_grid`` that no axis-aligned path of outside vertices links to
    the grid's boundary: bubbles enclosed by the surface. ``outside``: ``[N]`` bool.

    Axis steps only (not every tet edge): a layer of inside vertices one vertex thick, as a thin shell
    sampled on the grid gives, lets tet diagonals through but encloses what is behind it for these.
    """
    n = resolution + 1
    bubbles = enclosed(outside.view(n, n, n).cpu().numpy())
    return torch.from_numpy(bubbles.reshape(-1)).to(outside.device)
