"""Vertex normals split at the crease angle: a box keeps its hard edges, a ball stays smooth, and the
split leaves positions, UVs, texture and topology as they were."""

import numpy as np
import pytest
import torch
import trimesh
from export_shapes import ball, smooth_albedo, unit_cube, validate_gltf
from PIL import Image
from scipy import ndimage
from usd_checks import usd_validation_errors

from dreamsmith.exporters.bake import sample_texture
from dreamsmith.exporters.cleanup import cleanup, face_normals, smooth_vertex_normals, weld_index
from dreamsmith.exporters.decimate import decimate
from dreamsmith.exporters.lod import lod_meshes
from dreamsmith.exporters.normals import crease_vertex_normals
from dreamsmith.exporters.pipeline import ExportOptions, export_mesh
from dreamsmith.exporters.previews import poster
from dreamsmith.exporters.usdz import usd_available
from dreamsmith.representations.mesh import Mesh


def unit_face_normals(mesh: Mesh) -> np.ndarray:
    normals = face_normals(mesh.vertices, mesh.faces)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def corner_alignment(vertex_normals: np.ndarray, mesh: Mesh) -> np.ndarray:
    """``[F, 3]`` cosine between each corner's vertex normal and its face's normal."""
    return np.einsum("fck,fk->fc", vertex_normals[mesh.faces], unit_face_normals(mesh))


def terracotta(points: torch.Tensor) -> torch.Tensor:
    return torch.tensor([0.7, 0.42, 0.28]).expand(points.shape[0], 3)


@pytest.fixture(scope="module")
def exported_cube(tmp_path_factory):
    out = tmp_path_factory.mktemp("cube")
    formats = ("glb", "obj", "usdz") if usd_available() else ("glb", "obj")
    options = ExportOptions(formats=formats, texture_size=64, preview_resolution=96, name="cube")
    return out, export_mesh(unit_cube(), terracotta, out, options)


def test_an_exported_cube_reads_back_with_face_aligned_normals_on_every_face(exported_cube):
    out, result = exported_cube
    for name in ("cube.glb", "cube.obj"):
        loaded = trimesh.load(out / name, force="mesh", process=False)
        mesh = Mesh(loaded.vertices, loaded.faces)
        assert mesh.n_faces == 12
        assert corner_alignment(np.asarray(loaded.vertex_normals), mesh).min() > 0.9999, name
        # 6 faces x 4 corners: every cube corner split into its 3 faces' normals
        assert len(np.unique(np.round(np.hstack([loaded.vertices, loaded.vertex_normals]), 5), axis=0)) == 24
    assert validate_gltf(out / "cube.glb")["issues"]["numErrors"] == 0
    if usd_available():
        from pxr import Usd, UsdGeom

        assert usd_validation_errors(out / "cube.usdz") == []
        stage = Usd.Stage.Open(str(out / "cube.usdz"))
        usd_mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/cube/cube_mesh"))
        mesh = Mesh(np.array(usd_mesh.GetPointsAttr().Get()), np.array(usd_mesh.GetFaceVertexIndicesAttr().Get()))
        assert corner_alignment(np.array(usd_mesh.GetNormalsAttr().Get()), mesh).min() > 0.9999
    metrics = result.qa["asset"]["metrics"]
    assert metrics["watertight"] and metrics["boundary_edges"] == 0 and metrics["connected_components"] == 1


def shading_gradient(image: np.ndarray) -> float:
    """90th percentile of the luminance gradient (levels per pixel) inside the object's silhouette."""
    luminance = image.astype(np.float64).mean(axis=-1)
    inside = ndimage.binary_erosion((image < 250).any(axis=-1), iterations=2)
    gradient_y, gradient_x = np.gradient(luminance)
    return float(np.percentile(np.hypot(gradient_x, gradient_y)[inside], 90))


def test_the_cube_poster_shades_each_face_flat(exported_cube):
    out, result = exported_cube
    hard = np.asarray(Image.open(out / "cube_poster.png").convert("RGB"))
    soft = poster(crease_vertex_normals(result.mesh, 180.0), resolution=hard.shape[0])
    # flat faces under a headlight change by a fraction of a level per pixel; smoothed ones by levels
    assert shading_gradient(hard) < 1.0 < 1.5 < shading_gradient(soft)


def test_splitting_moves_no_vertex_and_keeps_uvs_and_the_baked_texture(exported_cube):
    _, result = exported_cube
    cube = result.mesh
    weld = weld_index(cube.vertices)
    assert len(np.unique(weld)) == 8  # split vertices share exact positions
    baked = sample_texture(cube.base_color_texture, cube.uvs)  # the texel under each split vertex
    assert np.abs(baked - np.array([0.7, 0.42, 0.28])).max() < 1 / 255 + 1e-6


def test_a_ball_stays_smooth_and_unsplit():
    mesh = cleanup(ball(resolution=32))
    smooth = smooth_vertex_normals(mesh)
    creased = crease_vertex_normals(mesh, 40.0)
    assert creased.n_vertices == mesh.n_vertices and np.array_equal(creased.faces, mesh.faces)
    assert np.abs(creased.vertex_normals - smooth.vertex_normals).max() < 1e-5


def test_a_ball_through_the_pipeline_keeps_its_vertices_and_radial_normals(tmp_path):
    result = export_mesh(ball(resolution=32), smooth_albedo, tmp_path,
                         ExportOptions(texture_size=64, preview_resolution=0, crease_angle=40.0))
    unsplit = export_mesh(ball(resolution=32), smooth_albedo, tmp_path / "all_smooth",
                          ExportOptions(texture_size=64, preview_resolution=0, crease_angle=180.0))
    asset = result.mesh
    assert asset.n_vertices == unsplit.mesh.n_vertices  # UV seams split vertices, no crease did
    radial = asset.vertices / np.linalg.norm(asset.vertices, axis=1, keepdims=True)
    assert (asset.vertex_normals * radial).sum(axis=1).min() > 0.98


def test_decimated_levels_of_a_ball_shade_almost_all_smooth():
    levels = lod_meshes(decimate(cleanup(ball(resolution=40)), 4000), 3)
    for level in levels:  # 2000, 1000, 500 triangles: decimation folds make a few sharp edges at most
        creased, smooth = crease_vertex_normals(level, 40.0), smooth_vertex_normals(level)
        cosine = np.einsum("fck,fck->fc", creased.vertex_normals[creased.faces], smooth.vertex_normals[level.faces])
        areas = np.linalg.norm(face_normals(level.vertices, level.faces), axis=1)
        changed = areas[cosine.min(axis=1) < np.cos(np.radians(5))].sum() / areas.sum()
        assert changed < 0.01, (level.n_faces, changed)


@pytest.mark.parametrize("angle, expected_vertices", [(0.0, 24), (89.0, 24), (91.0, 8), (180.0, 8)])
def test_the_crease_angle_decides_which_cube_edges_are_hard(angle, expected_vertices):
    cube = cleanup(unit_cube())
    creased = crease_vertex_normals(cube, angle)
    assert creased.n_vertices == expected_vertices and len(np.unique(weld_index(creased.vertices))) == 8
    assert creased.n_faces == 12
    if angle < 90:  # coplanar triangles stay one smooth (flat) face even at 0 degrees
        assert corner_alignment(creased.vertex_normals, creased).min() > 0.9999
    else:
        assert np.allclose(creased.vertex_normals, smooth_vertex_normals(cube).vertex_normals, atol=1e-6)
