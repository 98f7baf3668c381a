"""The toyworld score (TOYWORLD.md "The score"): an asset against its caption's ground truth.

Both are meshes rendered by the same renderer (the project's mesh rasterizer, albedo shading, no
antialiasing) from 8 cameras at elevation 20 deg, azimuths 0, 45, ..., 315 deg: silhouette IoU
(foreground = opacity > 0.5), mean over views; colour error = mean absolute difference of the mean
foreground sRGB colour.
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


@dataclass
class Score:
    iou: float
    """Silhouette IoU, mean over the views."""
    colour_error: float
    """Mean absolute difference of the mean foreground colour (sRGB)."""
    per_view_iou: list[float]


def score_cameras(resolution: int = 64) -> Cameras:
    return orbit_cameras(toyworld.SCORE_N_VIEWS, toyworld.SCORE_ELEVATION_DEG, toyworld.CAMERA_DISTANCE,
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


def score_mesh(mesh: Mesh, text: str, resolution: int = 64) -> Score:
    """Score an asset against the ground truth of caption ``text``."""
    cameras = score_cameras(resolution)
    truth_rgb, truth_mask = render_mesh(ground_truth_mesh(text), cameras)
    if mesh.n_faces == 0:
        return Score(0.0, 1.0, [0.0] * len(cameras))
    rgb, mask = render_mesh(mesh, cameras)
    union = (mask | truth_mask).sum((1, 2)).clamp(min=1)
    per_view = ((mask & truth_mask).sum((1, 2)) / union).tolist()
    mean_colour = rgb[mask].mean(0) if mask.any() else torch.ones(3)
    truth_colour = truth_rgb[truth_mask].mean(0)
    return Score(float(np.mean(per_view)), float((mean_colour - truth_colour).abs().mean()), per_view)
