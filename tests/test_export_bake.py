"""UV unwrap and texture baking: the texture holds the albedo where the surface is, without seams."""

import numpy as np
import pytest
import torch
from export_shapes import ball, smooth_albedo

from dreamsmith.exporters.bake import bake_base_color, fill_gutters, rasterize_uv, sample_texture, uv_coverage
from dreamsmith.exporters.cleanup import cleanup
from dreamsmith.exporters.decimate import decimate
from dreamsmith.exporters.uv import unwrap

SIZE = 256


@pytest.fixture(scope="module")
def baked():
    geometry = decimate(cleanup(ball(resolution=40)), 2000)
    return geometry, bake_base_color(unwrap(geometry, SIZE), smooth_albedo, SIZE)


def test_unwrap_keeps_every_triangle_and_gives_non_overlapping_uvs_in_the_unit_square(baked):
    geometry, mesh = baked
    assert mesh.n_faces == geometry.n_faces
    assert np.allclose(mesh.vertices[mesh.faces], geometry.vertices[geometry.faces])  # same triangles, same order
    assert mesh.uvs.min() >= 0 and mesh.uvs.max() <= 1
    coverage = uv_coverage(mesh.uvs, mesh.faces, SIZE)
    assert (coverage >= 2).sum() == 0 and (coverage >= 1).mean() > 0.4


def test_rasterized_texel_centres_reproduce_their_uvs():
    uvs = np.array([[0.1, 0.1], [0.9, 0.13], [0.12, 0.9]])
    face_index, barycentric = rasterize_uv(uvs, np.array([[0, 1, 2]]), 64)
    covered = face_index == 0
    (x1, y1), (x2, y2) = uvs[1] - uvs[0], uvs[2] - uvs[0]
    area = 0.5 * abs(x1 * y2 - y1 * x2)
    assert covered.sum() == pytest.approx(area * 64**2, rel=0.03)
    rows, cols = np.nonzero(covered)
    texel_uv = np.stack([(cols + 0.5) / 64, 1 - (rows + 0.5) / 64], axis=-1)
    assert np.allclose(barycentric[covered] @ uvs, texel_uv, atol=1e-6)
    assert covered[-10, 10] and not covered[10, -10]  # v = 0 is the bottom row


def test_texture_holds_the_albedo_at_random_surface_points(baked):
    _, mesh = baked
    rng = np.random.default_rng(0)
    face = rng.integers(0, mesh.n_faces, 5000)
    weights = rng.dirichlet(np.ones(3), 5000)
    points = np.einsum("nk,nkd->nd", weights, mesh.vertices[mesh.faces[face]])
    uvs = np.einsum("nk,nkd->nd", weights, mesh.uvs[mesh.faces[face]])
    error = np.abs(sample_texture(mesh.base_color_texture, uvs) - smooth_albedo(torch.from_numpy(points)).numpy())
    assert error.mean() < 0.005 and error.max() < 0.05


def test_no_seams_every_copy_of_a_split_vertex_reads_its_albedo(baked):
    _, mesh = baked
    expected = smooth_albedo(torch.from_numpy(mesh.vertices)).numpy()
    error = np.abs(sample_texture(mesh.base_color_texture, mesh.uvs) - expected)
    assert error.mean() < 0.01 and error.max() < 0.06


def test_gutters_are_filled_with_the_nearest_chart_colour():
    image = np.zeros((8, 8, 3), np.float32)
    covered = np.zeros((8, 8), bool)
    image[2, 2], covered[2, 2] = [1, 0, 0], True
    image[6, 6], covered[6, 6] = [0, 0, 1], True
    filled = fill_gutters(image, covered)
    assert np.array_equal(filled[0, 0], [1, 0, 0]) and np.array_equal(filled[7, 7], [0, 0, 1])
    assert (filled.sum(-1) == 1).all()
