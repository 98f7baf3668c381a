"""Texture baking: rasterize the mesh in UV space, evaluate a field at each texel's 3D point, fill gutters.

Texel ``(row, col)`` of a ``size``² texture covers UVs around ``u = (col + 0.5) / size``,
``v = 1 - (row + 0.5) / size`` (row 0 is the top of the image, v = 1; the ``Mesh`` convention).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from dreamsmith.representations.mesh import Mesh

AlbedoFn = Callable[[Tensor], Tensor]
"""Albedo of surface points: ``points [N, 3] -> [N, 3]`` sRGB in [0, 1] (e.g. ``NeRFField.albedo``)."""

_CANDIDATES_PER_CHUNK = 1 << 18  # texel tests held in memory at once (~12 MB of temporaries)


def _texel_hits(uvs: np.ndarray, faces: np.ndarray, size: int, eps: float) -> Iterator[tuple[np.ndarray, ...]]:
    """Chunks of ``(face, row, col, barycentric [N, 3])`` for every texel centre inside a UV triangle
    (barycentric coordinates all >= ``-eps``; a positive ``eps`` admits none on an edge)."""
    x = uvs[:, 0].astype(np.float64) * size
    y = (1.0 - uvs[:, 1].astype(np.float64)) * size
    ax, bx, cx = (x[faces[:, k]] for k in range(3))
    ay, by, cy = (y[faces[:, k]] for k in range(3))
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    col0 = np.clip(np.ceil(np.minimum(np.minimum(ax, bx), cx) - 0.5), 0, size).astype(np.int64)
    col1 = np.clip(np.floor(np.maximum(np.maximum(ax, bx), cx) - 0.5), -1, size - 1).astype(np.int64)
    row0 = np.clip(np.ceil(np.minimum(np.minimum(ay, by), cy) - 0.5), 0, size).astype(np.int64)
    row1 = np.clip(np.floor(np.maximum(np.maximum(ay, by), cy) - 0.5), -1, size - 1).astype(np.int64)
    width = np.maximum(col1 - col0 + 1, 0)
    height = np.maximum(row1 - row0 + 1, 0)
    counts = np.where(np.abs(area2) > 1e-12, width * height, 0)
    # The barycentric weights of b and c are affine in the texel centre (px, py): w = kx px + ky py + k0, with
    # per-face coefficients, so a texel costs two gathers and multiply-adds per weight.
    safe = np.where(counts > 0, area2, 1.0)
    coefficients = np.stack([(cy - ay) / safe, -(cx - ax) / safe, (ay * (cx - ax) - ax * (cy - ay)) / safe,
                             -(by - ay) / safe, (bx - ax) / safe, (ax * (by - ay) - ay * (bx - ax)) / safe], axis=1)
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + _CANDIDATES_PER_CHUNK, side="right")), start + 1)
        face = np.repeat(np.arange(start, stop), counts[start:stop])
        local = np.arange(face.size) - np.repeat(ends[start:stop] - counts[start:stop] - base, counts[start:stop])
        face_width = width[face]
        row_offset = local // np.maximum(face_width, 1)
        col = col0[face] + (local - row_offset * face_width)
        row = row0[face] + row_offset
        px, py = col + 0.5, row + 0.5
        k = coefficients[face]
        weight_b = k[:, 0] * px + k[:, 1] * py + k[:, 2]
        weight_c = k[:, 3] * px + k[:, 4] * py + k[:, 5]
        barycentric = np.stack([1.0 - weight_b - weight_c, weight_b, weight_c], axis=-1)
        inside = (barycentric >= -eps).all(axis=-1)
        yield face[inside], row[inside], col[inside], barycentric[inside]
        start = stop


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which triangle covers each texel: ``face_index [size, size]`` (-1: none) and the texel centre's
    barycentric coordinates in it ``[size, size, 3]``."""
    face_index = np.full((size, size), -1, dtype=np.int64)
    barycentric = np.zeros((size, size, 3), dtype=np.float32)
    for face, row, col, weights in _texel_hits(uvs, faces, size, eps=1e-7):
        face_index[row, col] = face
        barycentric[row, col] = weights
    return face_index, barycentric


def uv_coverage(uvs: np.ndarray, faces: np.ndarray, size: int) -> np.ndarray:
    """``[size, size]`` how many triangles' interiors hold each texel centre (2+ means overlapping UVs)."""
    counts = np.zeros(size * size, dtype=np.int64)
    for _, row, col, _ in _texel_hits(uvs, faces, size, eps=-1e-6):
        counts += np.bincount(row * size + col, minlength=size * size)
    return counts.reshape(size, size)


def fill_gutters(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the value of its nearest covered texel (dilation to the whole
    gutter), so bilinear filtering and mip-maps at chart borders never mix in a background colour."""
    if covered.all() or not covered.any():
        return image
    rows, cols = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return image[rows, cols]


@torch.no_grad()
def bake(mesh: Mesh, function: AlbedoFn, size: int, chunk: int = 1 << 16) -> np.ndarray:
    """``function`` of the surface point under each texel, ``[size, size, C]`` float32, gutters filled.

    ``function`` receives CPU points ``[N, 3]`` (chunks of ``chunk``); one living on another device moves
    them itself."""
    if mesh.uvs is None:
        raise ValueError("bake needs a mesh with UVs; unwrap it first")
    face_index, barycentric = rasterize_uv(mesh.uvs, mesh.faces, size)
    covered = face_index >= 0
    corners = mesh.vertices[mesh.faces[face_index[covered]]]
    points = torch.from_numpy(np.einsum("nk,nkd->nd", barycentric[covered], corners).astype(np.float32))
    values = torch.cat([function(points[i : i + chunk]).float().cpu() for i in range(0, len(points), chunk)])
    image = np.zeros((size, size, values.shape[-1]), dtype=np.float32)
    image[covered] = values.numpy()
    return fill_gutters(image, covered)


def bake_base_color(mesh: Mesh, albedo: AlbedoFn, size: int) -> Mesh:
    """``mesh`` with its ``base_color_texture`` baked from ``albedo`` (clipped to [0, 1])."""
    return mesh.copy(base_color_texture=np.clip(bake(mesh, albedo, size), 0.0, 1.0))


def sample_texture(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``texture [H, W, C]`` at ``uvs [N, 2]`` (clamped to the edge), ``[N, C]``."""
    height, width = texture.shape[:2]
    x = np.clip(uvs[:, 0] * width - 0.5, 0, width - 1)
    y = np.clip((1.0 - uvs[:, 1]) * height - 0.5, 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), width - 2) if width > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), height - 2) if height > 1 else np.zeros(len(y), np.int64)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def vertex_color_albedo(mesh: Mesh) -> AlbedoFn:
    """An albedo function from ``mesh``'s vertex colours: the colour of the nearest vertex (white
    without colours); for exporting a mesh that has no field behind it."""
    from scipy.spatial import cKDTree

    if mesh.vertex_colors is None:
        return lambda points: torch.ones(points.shape[0], 3)
    tree = cKDTree(mesh.vertices)
    colors = torch.from_numpy(mesh.vertex_colors)
    return lambda points: colors[tree.query(points.detach().cpu().numpy())[1]]
