"""Tetrahedral grids generated at any resolution (no downloaded tet files).

A cube of ``resolution^3`` cells is split cell by cell into 6 tetrahedra by the Kuhn (Freudenthal)
triangulation: every tetrahedron follows a monotone path from the cell's (0,0,0) corner to its
(1,1,1) corner, one axis at a time. All cells share the same main diagonal, so the triangulations
of two neighbouring cells agree on their common face and the grid is a conforming tetrahedral mesh
(which marching tetrahedra needs for a watertight surface).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


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
