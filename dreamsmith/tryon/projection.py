"""Visibility-aware projection of edited views into a mesh's UV texture.

Every texel covered by a UV triangle is a surface point ``p`` with a normal ``n`` (area-weighted vertex
normals of the mesh welded by position, so UV seams do not show in them). A view sees it when ``p``
projects inside the image onto a pixel whose rasterized depth is ``p``'s own distance (not occluded).
Its weight in that view is ``exp(sharpness * (cos - 1))`` with ``cos = n . (camera - p) / |camera - p|``,
faded to 0 at grazing angles: the most head-on view dominates, and where two views see a texel about
equally (the boundary between their territories) the weights cross smoothly, so no seam is cut.
The texel's new colour is the weighted mean of the views' images, mixed with its old colour by the
weighted mean confidence (0: the source left it alone). Texels no view saw are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.exporters.bake import fill_gutters, rasterize_uv
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.mesh_regularizers import vertex_normals
from dreamsmith.tryon.source import SourceResult, ViewBatch

SHARPNESS = 12.0
"""How quickly a view's weight falls as it turns away from head-on (per unit of cosine)."""
GRAZING = (0.05, 0.2)
"""Cosines below the first weigh nothing; the weight reaches full strength at the second."""
DEPTH_TOLERANCE = 0.005
"""A texel is visible where the rasterized depth at its pixel is within this fraction of its distance to the
camera, plus the pixel's footprint times the surface's slope there."""


@dataclass
class Projection:
    """The projected texture and what each texel got.

    texture: ``[S, S, 3]`` the old texture with the edits mixed in (gutters filled); covered: ``[S, S]``
    texels inside a UV triangle; seen: ``[S, S]`` covered texels some view saw; alpha: ``[S, S]`` how much
    of the edit each texel took (the views' weighted confidence); points: ``[S, S, 3]`` each covered
    texel's surface point (0 elsewhere); best_view: ``[S, S]`` the view with the largest weight (-1 unseen).
    """

    texture: Tensor
    covered: Tensor
    seen: Tensor
    alpha: Tensor
    points: Tensor
    best_view: Tensor


def welded_vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Vertex normals ``[V, 3]`` computed with vertices at the same position merged (UV seams split them)."""
    merged, inverse = torch.unique(vertices, dim=0, return_inverse=True)
    return vertex_normals(merged, inverse[faces])[inverse]


def texel_surface(mesh: Mesh, size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(covered [S, S], points [S, S, 3], normals [S, S, 3])`` of the texels of ``mesh``'s UV layout."""
    face_index, barycentric = rasterize_uv(mesh.uvs, mesh.faces, size)
    covered = torch.from_numpy(face_index >= 0).to(device)
    vertices = torch.from_numpy(mesh.vertices).to(device)
    faces = torch.from_numpy(mesh.faces).to(device)
    corners = faces[torch.from_numpy(face_index).to(device).clamp(min=0)]  # [S, S, 3]
    weights = torch.from_numpy(barycentric).to(device).unsqueeze(-1)
    points = (vertices[corners] * weights).sum(-2) * covered.unsqueeze(-1)
    normals = F.normalize((welded_vertex_normals(vertices, faces)[corners] * weights).sum(-2), dim=-1, eps=1e-20)
    return covered, points, normals


def view_weights(points: Tensor, normals: Tensor, views: ViewBatch) -> tuple[Tensor, Tensor]:
    """For ``N`` surface points and ``B`` views: the head-on weight ``[B, N]`` (0 where not visible) and each
    point's pixel position in each view as a ``grid_sample`` grid ``[B, N, 2]``."""
    cameras = views.cameras
    c2w = cameras.c2w.to(points)
    centre = c2w[:, :3, 3]  # [B, 3]
    offset = points.unsqueeze(0) - centre.unsqueeze(1)  # [B, N, 3]
    local = torch.einsum("bnj,bji->bni", offset, c2w[:, :3, :3])  # camera frame: x right, y up, -z forward
    forward = (-local[..., 2]).clamp(min=1e-6)
    focal = cameras.focal_length.to(points).view(-1, 1)
    col = focal * local[..., 0] / forward + cameras.width / 2
    row = -focal * local[..., 1] / forward + cameras.height / 2
    grid = torch.stack([col / cameras.width * 2 - 1, row / cameras.height * 2 - 1], dim=-1)
    inside = (grid.abs() <= 1).all(-1) & (local[..., 2] < 0)
    distance = offset.norm(dim=-1)
    pixel_row = row.long().clamp(0, cameras.height - 1)
    pixel_col = col.long().clamp(0, cameras.width - 1)
    batch = torch.arange(len(cameras), device=points.device).view(-1, 1)
    depth = views.depth[..., 0].to(points)[batch, pixel_row, pixel_col]
    occupied = views.opacity[..., 0].to(points)[batch, pixel_row, pixel_col] > 0.5
    cosine = -(offset / distance.unsqueeze(-1).clamp(min=1e-9) * normals.unsqueeze(0)).sum(-1)
    # the nearest pixel's ray misses the texel's point by up to half a pixel, along a surface that recedes
    # faster the more oblique it is: the tolerance grows with the pixel's footprint times the slope
    footprint = distance / focal
    slope = (1 - cosine.square()).clamp(min=0).sqrt() / cosine.clamp(min=0.25)
    tolerance = DEPTH_TOLERANCE * distance + footprint * (1 + slope)
    visible = inside & occupied & ((depth - distance).abs() <= tolerance)
    fade = ((cosine - GRAZING[0]) / (GRAZING[1] - GRAZING[0])).clamp(0, 1)
    weight = torch.exp(SHARPNESS * (cosine - 1)) * fade * visible
    return weight, grid


def sample_views(images: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples ``[B, N, C]`` of ``images [B, H, W, C]`` at ``grid [B, N, 2]``."""
    sampled = F.grid_sample(images.permute(0, 3, 1, 2), grid.unsqueeze(1).to(images), mode="bilinear",
                            padding_mode="border", align_corners=False)
    return sampled[:, :, 0].transpose(1, 2)


@torch.no_grad()
def project(mesh: Mesh, texture: Tensor, views: ViewBatch, result: SourceResult) -> Projection:
    """Bake ``result`` (a source's answer for ``views``) into ``texture [S, S, 3]`` of ``mesh`` (with UVs).

    Colours are sampled from each view premultiplied by its foreground so that a pixel next to the
    silhouette mixes in no background."""
    device = texture.device
    size = texture.shape[0]
    covered, points, normals = texel_surface(mesh, size, device)
    flat = covered.reshape(-1)
    weight, grid = view_weights(points.reshape(-1, 3)[flat], normals.reshape(-1, 3)[flat], views)
    foreground = views.opacity.to(texture)
    stacked = torch.cat([result.images.to(texture) * foreground, result.confidence.unsqueeze(-1).to(texture)
                         * foreground, foreground], dim=-1)
    samples = sample_views(stacked, grid)  # [B, N, 5]
    coverage = samples[..., 4].clamp(min=1e-6)
    colour, confidence = samples[..., :3] / coverage.unsqueeze(-1), (samples[..., 3] / coverage).clamp(0, 1)
    total = weight.sum(0)
    edit_weight = weight * confidence
    seen_flat = total > 1e-12
    alpha_flat = torch.where(seen_flat, edit_weight.sum(0) / total.clamp(min=1e-12), torch.zeros_like(total))
    mean = (edit_weight.unsqueeze(-1) * colour).sum(0) / edit_weight.sum(0).clamp(min=1e-12).unsqueeze(-1)
    old = texture.reshape(-1, 3)[flat]
    new = old + alpha_flat.unsqueeze(-1) * (mean - old)
    out = texture.reshape(-1, 3).clone()
    out[flat] = new
    seen, alpha = torch.zeros_like(flat), torch.zeros(flat.shape, dtype=texture.dtype, device=device)
    best = torch.full(flat.shape, -1, dtype=torch.long, device=device)
    seen[flat], alpha[flat] = seen_flat, alpha_flat
    best[flat] = torch.where(seen_flat, weight.argmax(0), torch.full_like(seen_flat, -1, dtype=torch.long))
    filled = fill_gutters(out.reshape(size, size, 3).cpu().numpy(), covered.cpu().numpy())
    return Projection(torch.from_numpy(np.ascontiguousarray(filled)).to(texture), covered, seen.reshape(size, size),
                      alpha.reshape(size, size), points, best.reshape(size, size))
