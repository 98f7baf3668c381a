"""UV unwrap with xatlas: charts cut along seams, packed into one square atlas with gutters."""

from __future__ import annotations

import numpy as np

from dreamsmith.representations.mesh import Mesh


def unwrap(mesh: Mesh, texture_size: int, padding: int = 4) -> Mesh:
    """``mesh`` with UVs ``[V', 2]`` in [0, 1] for a ``texture_size``² texture.

    Vertices on chart seams are split (V' >= V; positions and other attributes copied), faces keep
    their order and winding. ``padding``: texels of gutter between charts, which baking fills so
    mip-maps do not bleed one chart into another.
    """
    import xatlas

    atlas = xatlas.Atlas()
    normals = None if mesh.vertex_normals is None else np.ascontiguousarray(mesh.vertex_normals, dtype=np.float32)
    atlas.add_mesh(np.ascontiguousarray(mesh.vertices, dtype=np.float32),
                   np.ascontiguousarray(mesh.faces, dtype=np.uint32), normals)
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vertex_map, faces, uvs = atlas[0]
    vertex_map = vertex_map.astype(np.int64)
    return mesh.copy(
        vertices=mesh.vertices[vertex_map],
        faces=faces.astype(np.int64),
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[vertex_map],
        vertex_normals=None if mesh.vertex_normals is None else mesh.vertex_normals[vertex_map],
        uvs=np.clip(uvs, 0.0, 1.0).astype(np.float32),
        base_color_texture=None,
    )
