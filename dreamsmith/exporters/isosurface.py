"""Surfaces from density fields: marching cubes (Lorensen & Cline 1987) with scikit-image."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage
from skimage import measure
from torch import Tensor

from dreamsmith.representations.chunked import evaluate_in_chunks
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.tets import enclosed


@torch.no_grad()
def sample_grid(function: Callable[[Tensor], Tensor], bound: float, resolution: int, chunk: int = 262144,
                device: torch.device | str = "cpu") -> np.ndarray:
    """``function`` on a ``resolution^3`` grid of points spanning [-bound, bound]^3, as ``[x, y, z]``."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    values = torch.empty(points.shape[0])
    for start in range(0, points.shape[0], chunk):
        values[start : start + chunk] = function(points[start : start + chunk]).float().cpu()
    return values.view(resolution, resolution, resolution).numpy()


def marching_cubes(volume: np.ndarray, level: float, bound: float) -> Mesh:
    """The ``level`` isosurface of ``volume`` (sampled on [-bound, bound]^3, indexed [x, y, z]),
    faces wound counter-clockwise seen from the low-value side (outside of a density field)."""
    if not volume.min() < level < volume.max():
        return Mesh(np.zeros((0, 3)), np.zeros((0, 3)))
    # Negate the density so the outward side is "below the level", giving outward-facing windings.
    vertices, faces, _, _ = measure.marching_cubes(-volume, level=-level)
    spacing = 2.0 * bound / (volume.shape[0] - 1)
    return Mesh(vertices * spacing - bound, faces)


def remove_small_components(mesh: Mesh, keep_fraction: float) -> Mesh:
    """Drop connected components with fewer faces than ``keep_fraction`` of the largest (floaters)."""
    if mesh.n_faces == 0 or keep_fraction <= 0:
        return mesh
    import trimesh

    labels = trimesh.graph.connected_component_labels(trimesh.graph.face_adjacency(mesh.faces), mesh.n_faces)
    counts = np.bincount(labels)
    keep_faces = counts[labels] >= keep_fraction * counts.max()
    faces = mesh.faces[keep_faces]
    used = np.unique(faces)
    remap = np.full(mesh.n_vertices, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    colors = None if mesh.vertex_colors is None else mesh.vertex_colors[used]
    return Mesh(mesh.vertices[used], remap[faces], vertex_colors=colors)


def density_volume(density: Callable[[Tensor], Tensor], bound: float, resolution: int,
                   device: torch.device | str = "cpu", smoothing: float = 0.0, chunk: int = 262144) -> np.ndarray:
    """A density field sampled on a ``resolution^3`` grid over [-bound, bound]^3 (``chunk`` points per
    call), then blurred.

    smoothing: standard deviation (grid cells) of a Gaussian blur of the sampled density; it closes
    the pinholes marching cubes finds in the thin, noisy shells SDS tends to make.
    """
    volume = sample_grid(density, bound, resolution, chunk=chunk, device=device)
    return ndimage.gaussian_filter(volume, smoothing) if smoothing > 0 else volume


def fill_cavities(volume: np.ndarray, level: float, close_cells: int = 2) -> np.ndarray:
    """``volume`` raised above ``level`` wherever the solid it bounds is hollow: its enclosed cavities,
    and the pinholes (up to ``2 * close_cells`` cells wide) through which a cavity would reach the
    outside. A NeRF's shell may hold little density inside, since no render sees the inside, and
    be thin enough at the export level to have pinholes: marching cubes would then give a hollow
    asset (a second, inward surface, wrong volume). The closing fills nothing wider than its cells,
    so an open hole such as a torus's stays."""
    inside = volume >= level
    ball = ndimage.generate_binary_structure(3, 1)
    closed = ndimage.binary_closing(np.pad(inside, close_cells + 1), ball, iterations=close_cells)
    closed = closed[(slice(close_cells + 1, -close_cells - 1),) * 3] | inside
    raised = (closed & ~inside) | enclosed(~closed)
    if not raised.any():
        return volume
    # just above the level: the surface crosses where the filled cells meet the outside, as flat as
    # the cells; a value far above it put the crossing a cell further out, a pyramid on every dent
    filled = volume.copy()
    filled[raised] = level + max(1e-3 * abs(level), 1e-6)
    return filled


def volume_mesh(volume: np.ndarray, albedo: Callable[[Tensor], Tensor], bound: float, threshold: float,
                keep_fraction: float = 0.05, device: torch.device | str = "cpu", chunk: int = 262144) -> Mesh:
    """The ``threshold`` isosurface of a sampled density (enclosed cavities filled), floaters removed,
    vertex colours from ``albedo`` (``chunk`` vertices per call)."""
    volume = fill_cavities(volume, threshold)
    mesh = remove_small_components(marching_cubes(volume, threshold, bound), keep_fraction)
    if mesh.n_faces == 0:
        return mesh
    vertices = torch.from_numpy(mesh.vertices).float().to(device)
    with torch.no_grad():
        colors = evaluate_in_chunks(albedo, vertices, chunk).float().cpu().numpy()
    return mesh.copy(vertex_colors=np.clip(colors, 0.0, 1.0))


def density_mesh(
    density: Callable[[Tensor], Tensor],
    albedo: Callable[[Tensor], Tensor],
    bound: float,
    resolution: int,
    threshold: float,
    keep_fraction: float = 0.05,
    device: torch.device | str = "cpu",
    smoothing: float = 0.0,
) -> Mesh:
    """The ``threshold`` isosurface of a density field (see :func:`density_volume`, :func:`volume_mesh`)."""
    volume = density_volume(density, bound, resolution, device, smoothing)
    return volume_mesh(volume, albedo, bound, threshold, keep_fraction, device)
