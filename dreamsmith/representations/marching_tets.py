"""Differentiable marching tetrahedra (DMTet, Shen et al. 2021; the table form of nvdiffrec).

Each tetrahedron whose corners' SDF signs differ contributes one triangle (1 or 3 corners inside)
or a quad split into two triangles (2 corners inside). Surface vertices sit on grid edges with a sign
change, at the zero crossing of the linearly interpolated SDF::

    p = v_a + (v_b - v_a) * s_a / (s_a - s_b)

so they are differentiable with respect to both the SDF values and the grid vertex positions (the
DMTet deformation). One surface vertex per grid edge, shared by every tet around that edge, makes the
mesh watertight on a conforming grid. Convention: ``sdf < 0`` inside, ``>= 0`` outside; triangles
are oriented with their normal pointing outside (from negative to positive SDF) provided every tet is
positively oriented, as :func:`dreamsmith.representations.tets.tet_grid` makes them.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

# Tet edges as pairs of local corner indices; the tables below index into this list.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _case_tables() -> tuple[Tensor, Tensor]:
    """Triangle table ``[16, 2, 3]`` (tet-edge indices, -1 = none) and triangle counts ``[16]``.

    Case bit i is set when corner i is inside. Triangles are listed in the orientation that points
    outside on a positively oriented reference tet; the orientation of a triangle relative to the
    inside/outside split cannot change while the tet stays positively oriented and the crossings stay
    inside their edges, so one reference fixes it for all.
    """
    reference = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    edge_index = {frozenset(e): i for i, e in enumerate(TET_EDGES)}
    table = torch.full((16, 2, 3), -1, dtype=torch.int64)
    counts = torch.zeros(16, dtype=torch.int64)
    for case in range(16):
        inside = [c for c in range(4) if (case >> c) & 1]
        outside = [c for c in range(4) if not (case >> c) & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            triangles = [[edge_index[frozenset((lone, o))] for o in others]]
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            ring = [edge_index[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]
            triangles = [[ring[0], ring[1], ring[2]], [ring[0], ring[2], ring[3]]]
        else:
            continue
        outward = reference[outside].mean(0) - reference[inside].mean(0)
        for t, triangle in enumerate(triangles):
            mid = torch.stack([reference[list(TET_EDGES[e])].mean(0) for e in triangle])
            normal = torch.linalg.cross(mid[1] - mid[0], mid[2] - mid[0], dim=-1)
            if torch.dot(normal, outward) < 0:
                triangle = [triangle[0], triangle[2], triangle[1]]
            table[case, t] = torch.tensor(triangle)
        counts[case] = len(triangles)
    return table, counts


TRIANGLE_TABLE, TRIANGLE_COUNT = _case_tables()


def kaolin_available() -> bool:
    """Whether kaolin (optional) can be imported."""
    return importlib.util.find_spec("kaolin") is not None


def marching_tets(vertices: Tensor, tets: Tensor, sdf: Tensor, use_kaolin: bool | None = None) -> tuple[Tensor, Tensor]:
    """The zero level set of ``sdf`` over a tet mesh as a triangle mesh.

    vertices: ``[N, 3]`` grid vertex positions; tets: ``[T, 4]`` int64 (positively oriented);
    sdf: ``[N]``. Returns surface vertices ``[V, 3]`` (differentiable w.r.t. ``vertices`` and ``sdf``)
    and faces ``[F, 3]`` int64, outward-oriented; both empty when there is no sign change.
    ``use_kaolin``: None = kaolin's kernel when importable, else this PyTorch implementation.
    """
    if use_kaolin or (use_kaolin is None and kaolin_available()):
        return _marching_tets_kaolin(vertices, tets, sdf)
    device = vertices.device
    with torch.no_grad():
        inside = sdf < 0
        corner_inside = inside[tets]  # [T, 4]
        n_inside = corner_inside.sum(1)
        crossing_tets = (n_inside > 0) & (n_inside < 4)
        tets = tets[crossing_tets]
        corner_inside = corner_inside[crossing_tets]

        edge_corners = torch.tensor(TET_EDGES, device=device)
        edges = torch.sort(tets[:, edge_corners], dim=-1).values.reshape(-1, 2)  # [T*6, 2]
        key = edges[:, 0] * sdf.shape[0] + edges[:, 1]
        unique_key, edge_of_tet = torch.unique(key, return_inverse=True)
        unique_edges = torch.stack([unique_key // sdf.shape[0], unique_key % sdf.shape[0]], dim=1)
        sign_change = inside[unique_edges[:, 0]] != inside[unique_edges[:, 1]]
        surface_vertex_of_edge = torch.full_like(unique_key, -1)
        surface_vertex_of_edge[sign_change] = torch.arange(int(sign_change.sum()), device=device)
        tet_surface_vertex = surface_vertex_of_edge[edge_of_tet].reshape(-1, 6)

        case = (corner_inside.long() * torch.tensor([1, 2, 4, 8], device=device)).sum(1)
        table, count = TRIANGLE_TABLE.to(device)[case], TRIANGLE_COUNT.to(device)[case]
        faces = torch.cat([torch.gather(tet_surface_vertex[count > k], 1, table[count > k, k]) for k in range(2)])
        a, b = unique_edges[sign_change].unbind(1)

    sdf_a, sdf_b = sdf[a].unsqueeze(1), sdf[b].unsqueeze(1)
    surface = vertices[a] + (vertices[b] - vertices[a]) * (sdf_a / (sdf_a - sdf_b))
    return surface, faces


def _marching_tets_kaolin(vertices: Tensor, tets: Tensor, sdf: Tensor) -> tuple[Tensor, Tensor]:
    """kaolin's marching tetrahedra (unverified here: kaolin is not installed on our CI machines).

    kaolin's sign and winding conventions are not relied on: faces are flipped if the mesh's signed
    volume comes out negative, so the result is outward-oriented like the PyTorch path's.
    """
    from kaolin.ops.conversions import marching_tetrahedra

    surfaces, faces = marching_tetrahedra(vertices.unsqueeze(0), tets, sdf.unsqueeze(0))
    surface, faces = surfaces[0], faces[0].long()
    if faces.shape[0] and signed_volume(surface.detach(), faces) < 0:
        faces = faces[:, [0, 2, 1]]
    return surface, faces


def signed_volume(vertices: Tensor, faces: Tensor) -> Tensor:
    """Volume enclosed by a closed triangle mesh; positive when its faces point outward."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return (v0 * torch.linalg.cross(v1, v2, dim=-1)).sum() / 6.0
