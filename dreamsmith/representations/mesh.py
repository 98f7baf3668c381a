"""The triangle mesh every exporter and the mesh rasterizer work on."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Mesh:
    """A triangle mesh in the world frame (+Y up, metres, front +Z).

    vertices: ``[V, 3]`` float32; faces: ``[F, 3]`` int64, counter-clockwise seen from outside;
    vertex_colors: ``[V, 3]`` float32 sRGB in [0, 1] or None; vertex_normals: ``[V, 3]`` or None;
    uvs: ``[V, 2]`` float32 texture coordinates (origin bottom-left, as glTF's are flipped on write) or
    None; base_color_texture: ``[H, W, 3]`` float32 sRGB in [0, 1] or None (row 0 is the top of the
    image, v = 1).
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None
    vertex_normals: np.ndarray | None = None
    uvs: np.ndarray | None = None
    base_color_texture: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.asarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.vertex_colors is not None:
            self.vertex_colors = np.asarray(self.vertex_colors, dtype=np.float32).reshape(-1, 3)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def bounds(self) -> np.ndarray:
        """``[2, 3]`` axis-aligned bounding box (min, max) in metres."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def copy(self, **changes: object) -> Mesh:
        """A copy with some fields replaced."""
        return replace(self, **changes)
