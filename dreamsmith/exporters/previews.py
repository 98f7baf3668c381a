"""Previews of the exported asset, rendered by the project's mesh rasterizer from its UV texture:
a 36-frame turntable (GIF and MP4) and a poster PNG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dreamsmith.exporters.bake import sample_texture
from dreamsmith.exporters.cleanup import weld_index
from dreamsmith.renderers.cameras import Cameras, orbit_cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer, TextureField
from dreamsmith.representations.mesh import Mesh

TURNTABLE_FRAMES = 36
FRAMES_PER_SECOND = 12


def texture_lookup(texture: np.ndarray) -> TextureField:
    """The albedo at texture coordinates ``uvs [N, 2]``: ``texture`` sampled bilinearly."""

    def albedo(uvs: Tensor) -> Tensor:
        return torch.from_numpy(sample_texture(texture, uvs.detach().cpu().numpy()).astype(np.float32)).to(uvs)

    return albedo


def framing(mesh: Mesh, fovy_deg: float, margin: float = 1.1) -> tuple[np.ndarray, float]:
    """The bounding-box centre ``[3]`` and the camera distance at which the sphere around it holding
    every vertex fills the view (times ``margin``)."""
    low, high = mesh.bounds()
    centre = (low + high) / 2
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=-1).max())
    return centre, margin * max(radius, 1e-6) / math.sin(math.radians(fovy_deg) / 2)


@torch.no_grad()
def render_views(mesh: Mesh, cameras: Cameras, centre: np.ndarray, batch: int = 6) -> np.ndarray:
    """uint8 ``[B, H, W, 3]`` lambertian renders (headlight, white background) of the textured ``mesh``
    moved by ``-centre`` (the cameras look at the origin).

    The rasterized faces index vertices welded where position and normal agree, so the renderer's
    area-weighted normals are those exported: continuous across UV seams, split at hard edges. The
    texture coordinates are interpolated on the unwelded faces (the same faces, in the same order)."""
    vertices = torch.from_numpy(mesh.vertices - centre.astype(np.float32))
    key = mesh.vertices if mesh.vertex_normals is None else np.concatenate([mesh.vertices, mesh.vertex_normals], 1)
    faces = torch.from_numpy(weld_index(key)[mesh.faces])
    textured = mesh.uvs is not None and mesh.base_color_texture is not None
    albedo = texture_lookup(mesh.base_color_texture) if textured else None
    uvs, uv_faces = (torch.from_numpy(mesh.uvs), torch.from_numpy(mesh.faces)) if textured else (None, None)
    if albedo is None and mesh.vertex_colors is not None:
        albedo = torch.from_numpy(mesh.vertex_colors)
    renderer = MeshRenderer()
    frames = [renderer(vertices, faces, cameras[i : i + batch], albedo=albedo, shading="lambertian", uvs=uvs,
                       uv_faces=uv_faces).rgb for i in range(0, len(cameras), batch)]
    return (torch.cat(frames).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def turntable(mesh: Mesh, resolution: int = 256, elevation_deg: float = 20.0, fovy_deg: float = 40.0,
              n_frames: int = TURNTABLE_FRAMES) -> np.ndarray:
    """uint8 ``[n_frames, H, W, 3]``: one full turn starting at the front (azimuth 0)."""
    centre, distance = framing(mesh, fovy_deg)
    return render_views(mesh, orbit_cameras(n_frames, elevation_deg, distance, fovy_deg, resolution), centre)


def poster(mesh: Mesh, resolution: int = 512, azimuth_deg: float = 30.0, elevation_deg: float = 20.0,
           fovy_deg: float = 40.0) -> np.ndarray:
    """uint8 ``[H, W, 3]``: the asset seen from the front-right, a little above."""
    centre, distance = framing(mesh, fovy_deg)
    cameras = Cameras.from_spherical(torch.tensor(azimuth_deg), torch.tensor(elevation_deg), torch.tensor(distance),
                                     torch.tensor(fovy_deg), resolution)
    return render_views(mesh, cameras, centre)[0]


def write_previews(mesh: Mesh, folder: Path, stem: str, resolution: int = 256) -> list[Path]:
    """Write ``<stem>_turntable.gif``, ``<stem>_turntable.mp4`` and ``<stem>_poster.png`` into ``folder``."""
    import imageio.v3 as iio

    folder = Path(folder)
    frames = turntable(mesh, resolution)
    gif, mp4, png = (folder / f"{stem}_turntable.gif", folder / f"{stem}_turntable.mp4", folder / f"{stem}_poster.png")
    iio.imwrite(gif, frames, extension=".gif", duration=round(1000 / FRAMES_PER_SECOND), loop=0)
    iio.imwrite(mp4, frames, extension=".mp4", plugin="FFMPEG", fps=FRAMES_PER_SECOND, codec="libx264",
                macro_block_size=16)
    Image.fromarray(poster(mesh, 2 * resolution)).save(png)
    return [gif, mp4, png]
