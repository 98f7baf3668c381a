"""The colour a volume field shows at its surface, for baking: what a camera looking along the normal sees.

The bake reads the field's albedo at the extracted surface. That is right for an opaque field, whose
renders are made of the albedo at the surface, and wrong for a translucent one: a white object on the
white background that the score distillation left as a faint volume (density about 1/m, a white haze
in front of a dark, thin shell) rendered white-grey, but its level set lies in the shell, so the asset
came out black. The seen colour is the albedo alpha-composited along a ray that enters the surface
along its inward normal, normalised by the ray's opacity (the background left out):

    c_seen = Σ_i T_i α_i a_i / Σ_i T_i α_i,   α_i = 1 − exp(−σ_i δ),   T_i = Π_{j<i} (1 − α_j)

For an opaque field the weights sit at the surface and c_seen is the surface albedo. The ray march
costs many field queries per point, so it runs at the mesh's vertices, and the bake adds the
difference ``c_seen − albedo`` (interpolated from the nearest vertices) to the albedo it reads at
each texel: the texture keeps the field's detail where the field is opaque.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from dreamsmith.exporters.bake import AlbedoFn
from dreamsmith.representations.chunked import evaluate_in_chunks
from dreamsmith.representations.mesh import Mesh

FieldFn = Callable[[Tensor], Tensor]

_NEIGHBOURS = 4  # vertices whose corrections blend at a texel (inverse distance)


@torch.no_grad()
def seen_albedo(density: FieldFn, albedo: FieldFn, points: Tensor, normals: Tensor, outside: float, inside: float,
                samples: int, chunk: int = 1 << 18, own: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(colour [N, 3], opacity [N])`` on the CPU, seen along the rays from ``points + outside·normals`` to
    ``points − inside·normals`` (``samples`` midpoints); ``normals`` point out of the object. Where the
    ray's opacity is 0 the colour is the albedo at the point (``own``, when the caller has it already)."""
    depths = (torch.arange(samples, dtype=points.dtype) + 0.5) / samples * (outside + inside) - outside
    step = (outside + inside) / samples
    along = points[:, None, :] - depths[None, :, None] * normals[:, None, :]  # [N, S, 3]
    flat = along.reshape(-1, 3)
    sigma = evaluate_in_chunks(density, flat, chunk).float().view(-1, samples).clamp_min(0.0)
    colour = evaluate_in_chunks(albedo, flat, chunk).float().view(-1, samples, 3)
    alpha = 1.0 - torch.exp(-sigma * step)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=1), dim=1)
    weight = transmittance * alpha
    opacity = weight.sum(dim=1)
    seen = ((weight[..., None] * colour).sum(dim=1) / opacity.clamp_min(1e-8)[:, None]).cpu()
    opacity = opacity.cpu()  # a field on the GPU answers there; the bake and the KD-tree work on the CPU
    own = evaluate_in_chunks(albedo, points, chunk).float().cpu() if own is None else own
    return torch.where(opacity[:, None] > 1e-6, seen, own), opacity


@torch.no_grad()
def seen_albedo_fn(mesh: Mesh, density: FieldFn, albedo: FieldFn, outside: float, inside: float, samples: int,
                   chunk: int = 1 << 18) -> AlbedoFn:
    """An albedo function for the bake: ``albedo(p)`` plus the seen-minus-surface difference at the
    vertices of ``mesh`` (outward-wound, with vertex normals) nearest to ``p``, clipped to [0, 1]."""
    if mesh.n_vertices == 0:
        return albedo
    if mesh.vertex_normals is None:
        raise ValueError("seen_albedo_fn needs a mesh with vertex normals (exporters.cleanup.cleanup gives them)")
    vertices = torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32))
    normals = torch.from_numpy(np.asarray(mesh.vertex_normals, dtype=np.float32))
    own = evaluate_in_chunks(albedo, vertices, chunk).float().cpu()
    seen, _ = seen_albedo(density, albedo, vertices, normals, outside, inside, samples, chunk, own=own)
    difference = (seen - own).numpy()
    tree = cKDTree(mesh.vertices)
    k = min(_NEIGHBOURS, mesh.n_vertices)

    @torch.no_grad()
    def corrected(points: Tensor) -> Tensor:
        distance, index = tree.query(points.detach().cpu().numpy(), k=k)
        distance, index = distance.reshape(len(points), k), index.reshape(len(points), k)
        weight = 1.0 / np.maximum(distance, 1e-9)
        weight /= weight.sum(axis=1, keepdims=True)
        shift = torch.from_numpy(np.einsum("nk,nkc->nc", weight, difference[index]).astype(np.float32))
        return (albedo(points).float().cpu() + shift).clamp(0.0, 1.0)

    return corrected
