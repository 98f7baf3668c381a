"""UV unwrap with xatlas: charts cut along seams, packed into one square atlas with gutters.

xatlas parameterizes each chart with a sparse solve whose cost grows faster than the chart's size: a
blob-like mesh becomes a handful of huge charts and the unwrap goes superlinear (10k triangles 1.8 s,
20k 5.9 s on 2 cores). Capping a chart's area at about ``CHART_FACES`` average triangles keeps every
solve small, so the unwrap grows linearly (0.5 s and 1.5 s) for a few more seams and the same atlas
utilization (measured by ``benchmarks/export_time.py``).
"""

from __future__ import annotations

import numpy as np

from dreamsmith.exporters.cleanup import face_areas
from dreamsmith.representations.mesh import Mesh

CHART_FACES = 256
"""Largest chart area, in average triangles of the mesh."""


def unwrap(mesh: Mesh, texture_size: int, padding: int = 4, chart_faces: int = CHART_FACES) -> Mesh:
    """``mesh`` with UVs ``[V', 2]`` in [0, 1] for a ``texture_size``² texture.

    Vertices on chart seams are split (V' >= V; positions and other attributes copied), faces keep
    their order and winding. ``padding``: texels of gutter between charts, which baking fills so
    mip-maps do not bleed one chart into another. ``chart_faces``: the largest chart's area in average
    triangles (0: unbounded, xatlas's default).
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
    charts = xatlas.ChartOptions()
    if chart_faces > 0 and mesh.n_faces > chart_faces:
        charts.max_chart_area = float(face_areas(mesh.vertices, mesh.faces).sum()) * chart_faces / mesh.n_faces
    atlas.generate(charts, pack)
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
