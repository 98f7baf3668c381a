"""Mesh geometry in PyTorch (normals, adjacency) and the regularizers built on it.

All functions are pure and differentiable with respect to ``vertices``; ``faces`` are ``[F, 3]``
int64 indices, counter-clockwise seen from outside.
"""

from __future__ import annotations

import torch
from torch import Tensor


def face_normals(vertices: Tensor, faces: Tensor, normalize: bool = True) -> Tensor:
    """Face normals ``[F, 3]``; unnormalized ones have length twice the face's area."""
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-20) if normalize else normals


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` (zero for vertices used by no face)."""
    weighted = face_normals(vertices, faces, normalize=False)
    normals = torch.zeros_like(vertices)
    for corner in range(3):
        normals = normals.index_add(0, faces[:, corner], weighted)
    return torch.nn.functional.normalize(normals, dim=-1, eps=1e-20)


def face_adjacency(faces: Tensor) -> Tensor:
    """Neighbour across each edge ``[F, 3]``: entry k is the face sharing edge (f[k], f[(k+1)%3]), or -1.

    On a non-manifold edge (three or more faces) faces are paired in index order; the rest get -1.
    """
    n_faces = faces.shape[0]
    if n_faces == 0:
        return faces.new_full((0, 3), -1)
    edges = torch.stack([faces, faces.roll(-1, dims=1)], dim=-1).reshape(-1, 2)
    lo, hi = edges.min(dim=1).values, edges.max(dim=1).values
    key = lo * (int(faces.max()) + 1) + hi
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    position = torch.arange(sorted_key.shape[0], device=faces.device)
    run_start = torch.ones_like(sorted_key, dtype=torch.bool)
    run_start[1:] = sorted_key[1:] != sorted_key[:-1]
    rank_in_run = position - torch.cummax(torch.where(run_start, position, 0), dim=0).values
    # slots of one edge pair up (0,1), (2,3), ...: the successor has the same key and even rank
    first = (sorted_key[1:] == sorted_key[:-1]) & (rank_in_run[:-1] % 2 == 0)
    a, b = order[:-1][first], order[1:][first]
    neighbour = faces.new_full((n_faces * 3,), -1)
    neighbour[a] = b // 3
    neighbour[b] = a // 3
    return neighbour.reshape(n_faces, 3)


def normal_consistency(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean of ``1 - cos`` between the normals of faces sharing an edge (0 for a flat sheet).

    The normal-consistency term of Magic3D/Fantasia3D mesh refinement; a scalar.
    """
    neighbour = face_adjacency(faces)
    face_index = torch.arange(faces.shape[0], device=faces.device).unsqueeze(1).expand_as(neighbour)
    once = neighbour > face_index  # each shared edge counted once
    if not bool(once.any()):
        return vertices.new_zeros(())
    normals = face_normals(vertices, faces)
    cos = (normals[face_index[once]] * normals[neighbour[once]]).sum(-1)
    return (1.0 - cos).mean()


def laplacian_smoothness(vertices: Tensor, faces: Tensor) -> Tensor:
    """Uniform Laplacian: mean over vertices of ``|v - mean(neighbours of v)|^2``; a scalar.

    Vertices used by no face are left out.
    """
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.unique(torch.sort(edges, dim=1).values, dim=0)
    source = torch.cat([edges[:, 0], edges[:, 1]])
    target = torch.cat([edges[:, 1], edges[:, 0]])
    neighbour_sum = torch.zeros_like(vertices).index_add(0, source, vertices[target])
    degree = torch.zeros(vertices.shape[0], dtype=vertices.dtype, device=vertices.device)
    degree = degree.index_add(0, source, torch.ones_like(source, dtype=vertices.dtype))
    used = degree > 0
    offset = vertices[used] - neighbour_sum[used] / degree[used].unsqueeze(1)
    return (offset**2).sum(-1).mean()
