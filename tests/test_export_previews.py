"""Previews read the UV texture through the rasterizer's own triangles and barycentrics: a cube whose six
faces are six tiles of one texture, its vertices split at every UV seam, shows each face's own tile."""

import numpy as np
import torch

from dreamsmith.exporters.previews import render_views
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.representations.mesh import Mesh

TILES = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float32)
"""Colours of the faces +x, -x, +y, -y, +z, -z, each a tile of a 3 x 2 texture."""


def tiled_cube(size: int = 64) -> Mesh:
    """A unit cube of 24 vertices (4 per face: split at the UV seams), face k mapped inside tile k."""
    vertices, faces, uvs = [], [], []
    for k, (axis, sign) in enumerate((a, s) for a in range(3) for s in (1, -1)):
        u_axis, v_axis = [i for i in range(3) if i != axis]
        corners = []
        for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            point = np.zeros(3)
            point[axis], point[u_axis], point[v_axis] = 0.5 * sign, 0.5 * du, 0.5 * dv
            corners.append(point)
            column, row = k % 3, k // 3  # tile (column, row), inset so bilinear reads stay inside
            uvs.append([(column + 0.5 + 0.3 * du) / 3, 1 - (row + 0.5 - 0.3 * dv) / 2])
        base = 4 * k
        quad = [(base, base + 1, base + 2), (base, base + 2, base + 3)]
        normal = np.cross(corners[1] - corners[0], corners[2] - corners[0])
        faces += quad if normal[axis] * sign > 0 else [tri[::-1] for tri in quad]
        vertices += corners
    height, width = size, size * 3 // 2
    texture = np.zeros((height, width, 3), dtype=np.float32)
    for k, colour in enumerate(TILES):
        column, row = k % 3, k // 3
        texture[row * height // 2:(row + 1) * height // 2, column * width // 3:(column + 1) * width // 3] = colour
    return Mesh(np.array(vertices, dtype=np.float32), np.array(faces), uvs=np.array(uvs, dtype=np.float32),
                base_color_texture=texture)


def test_each_face_shows_its_own_tile():
    mesh = tiled_cube()
    views = {4: (0.0, 0.0), 0: (90.0, 0.0), 2: (0.0, 89.0), 5: (180.0, 0.0)}  # face index: (azimuth, elevation)
    for face, (azimuth, elevation) in views.items():
        camera = Cameras.from_spherical(torch.tensor(azimuth), torch.tensor(elevation), torch.tensor(3.0),
                                        torch.tensor(30.0), 48)
        image = render_views(mesh, camera, np.zeros(3))[0].astype(np.float32) / 255
        centre = image[18:30, 18:30].reshape(-1, 3)
        hue = centre / centre.max(axis=1, keepdims=True)
        assert np.abs(hue - TILES[face]).max() < 0.05, (face, hue.mean(0))
