"""The toyworld score (TOYWORLD.md "The score"): an asset against its caption's ground truth.

Both are meshes rendered by the same renderer (the project's mesh rasterizer, albedo shading, no
antialiasing) from 8 cameras at elevation 20 deg, azimuths 0, 45, ..., 315 deg: silhouette IoU
(foreground = opacity > 0.5), mean over views; colour error = mean absolute difference of the mean
foreground sRGB colour. Side views cannot tell a cube from a double cone or a torus from a disc, so
the score also measures in 3D: the silhouette IoU from 4 views above (elevation 70 deg), the volume
IoU of the asset's occupancy (``occupancy.mesh_occupancy``) against the analytic shape's on a 96^3
grid, and the asset's bounding box against the shape's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from dreamsmith.exporters.isosurface import marching_cubes, sample_grid
from dreamsmith.renderers.cameras import Cameras, orbit_cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamsmith.representations.mesh import Mesh
from dreamsmith.toyworld import world as toyworld
from dreamsmith.toyworld.occupancy import grid_centres, mesh_occupancy


@dataclass
class Score:
    iou: float
    """Silhouette IoU, mean over the side views (elevation 20 deg)."""
    colour_error: float
    """Mean absolute difference of the mean foreground colour (sRGB)."""
    per_view_iou: list[float]
    top_iou: float
    """Silhouette IoU, mean over the views from above (elevation 70 deg)."""
    volume_iou: float
    """IoU of the asset's occupancy against the analytic shape's on the score grid."""
    extent: list[float]
    """The asset's bounding-box size (x, y, z) in metres."""
    extent_ratio: list[float]
    """``extent`` over the true shape's, per axis (1 is right)."""

    @property
    def extent_error(self) -> float:
        """The largest relative error of the bounding box over the three axes."""
        return max(abs(ratio - 1.0) for ratio in self.extent_ratio)

    @classmethod
    def empty(cls) -> Score:
        """The score of no asset at all."""
        return cls(0.0, 1.0, [], 0.0, 0.0, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])


def score_cameras(resolution: int = 64) -> Cameras:
    """The side views: 8 azimuths at elevation 20 deg."""
    return orbit_cameras(toyworld.SCORE_N_VIEWS, toyworld.SCORE_ELEVATION_DEG, toyworld.CAMERA_DISTANCE,
                         toyworld.FOVY_DEG, resolution)


def top_cameras(resolution: int = 64) -> Cameras:
    """The views from above: 4 azimuths at elevation 70 deg."""
    return orbit_cameras(toyworld.SCORE_TOP_N_VIEWS, toyworld.SCORE_TOP_ELEVATION_DEG, toyworld.CAMERA_DISTANCE,
                         toyworld.FOVY_DEG, resolution)


def ground_truth_mesh(text: str, resolution: int = 128) -> Mesh:
    """The caption's object as a mesh: marching cubes of its exact SDF, its albedo as vertex colours."""
    sdf, albedo = toyworld.caption_sdf(text)
    bound = 0.6
    volume = sample_grid(lambda points: -sdf(points), bound, resolution)
    mesh = marching_cubes(volume, 0.0, bound)
    return mesh.copy(vertex_colors=np.tile(albedo.numpy(), (mesh.n_vertices, 1)))


def load_mesh(path: Path) -> Mesh:
    """A GLB/OBJ as a ``Mesh`` with its vertex colours (white when it has none)."""
    loaded = trimesh.load(path, force="mesh")
    colors = getattr(loaded.visual, "vertex_colors", None)
    if colors is None or len(colors) != len(loaded.vertices):
        colors = loaded.visual.to_color().vertex_colors
    return Mesh(loaded.vertices, loaded.faces, vertex_colors=np.asarray(colors)[:, :3] / 255.0)


@torch.no_grad()
def render_mesh(mesh: Mesh, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Albedo renders ``[B, H, W, 3]`` and foreground masks ``[B, H, W]`` of a mesh."""
    renderer = MeshRenderer(MeshRendererConfig(antialias=False))
    out = renderer(torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), cameras,
                   albedo=torch.from_numpy(mesh.vertex_colors), shading="albedo")
    return out.rgb, out.opacity[..., 0] > 0.5


def truth_occupancy(text: str, resolution: int = toyworld.SCORE_VOLUME_RESOLUTION) -> np.ndarray:
    """Inside-ness ``[R, R, R]`` of the caption's analytic shape at the score grid's cell centres."""
    sdf, _ = toyworld.caption_sdf(text)
    axis = grid_centres(toyworld.SCORE_VOLUME_BOUND, resolution)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    return (sdf(torch.from_numpy(points)) < 0).numpy().reshape((resolution,) * 3)


def volume_iou(mesh: Mesh, text: str, resolution: int = toyworld.SCORE_VOLUME_RESOLUTION) -> float:
    """IoU of a closed mesh's occupancy against the caption's shape on a ``resolution^3`` grid."""
    inside = mesh_occupancy(mesh.vertices, mesh.faces, toyworld.SCORE_VOLUME_BOUND, resolution)
    truth = truth_occupancy(text, resolution)
    return float((inside & truth).sum() / max(int((inside | truth).sum()), 1))


def silhouette_iou(mesh: Mesh, truth: Mesh, cameras: Cameras) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """Per-view silhouette IoU of ``mesh`` against ``truth``, and the mean foreground colours of both."""
    truth_rgb, truth_mask = render_mesh(truth, cameras)
    rgb, mask = render_mesh(mesh, cameras)
    union = (mask | truth_mask).sum((1, 2)).clamp(min=1)
    per_view = ((mask & truth_mask).sum((1, 2)) / union).tolist()
    mean_colour = rgb[mask].mean(0) if mask.any() else torch.ones(3)
    return per_view, mean_colour, truth_rgb[truth_mask].mean(0)


def score_mesh(mesh: Mesh, text: str, resolution: int = 64,
               volume_resolution: int = toyworld.SCORE_VOLUME_RESOLUTION) -> Score:
    """Score an asset against the ground truth of caption ``text``."""
    if mesh.n_faces == 0:
        return Score.empty()
    truth = ground_truth_mesh(text)
    per_view, colour, truth_colour = silhouette_iou(mesh, truth, score_cameras(resolution))
    top, _, _ = silhouette_iou(mesh, truth, top_cameras(resolution))
    extent = (mesh.vertices.max(0) - mesh.vertices.min(0)).tolist()
    true_extent = toyworld.SHAPE_EXTENTS[toyworld.parse_caption(text)[1]]
    return Score(
        iou=float(np.mean(per_view)),
        colour_error=float((colour - truth_colour).abs().mean()),
        per_view_iou=per_view,
        top_iou=float(np.mean(top)),
        volume_iou=volume_iou(mesh, text, volume_resolution),
        extent=extent,
        extent_ratio=[e / t for e, t in zip(extent, true_extent, strict=True)],
    )
