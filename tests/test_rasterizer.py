"""The differentiable mesh rasterizer (CPU backend: Open3D visibility + PyTorch barycentrics/antialias)."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import torch
import trimesh

from dreamsmith.errors import DreamsmithError
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamsmith.renderers.rasterizer import interpolate, rasterize, resolve_backend


def icosphere(
    subdivisions: int, radius: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(mesh.vertices, dtype=dtype), torch.tensor(mesh.faces, dtype=torch.int64)


def cameras(azimuth: list[float], elevation: list[float], distance: float, resolution: int) -> Cameras:
    return Cameras.from_spherical(
        torch.tensor(azimuth), torch.tensor(elevation), torch.tensor(distance), torch.tensor(40.0), resolution
    )


def test_triangle_ids_and_depth_match_a_direct_open3d_ray_cast() -> None:
    vertices, faces = icosphere(3, 0.45)
    vertices = vertices * torch.tensor([1.0, 0.8, 1.1])  # not symmetric: views differ
    cams = cameras([0.0, 75.0, 200.0], [10.0, -35.0, 60.0], 2.0, 48)
    fragments = rasterize(vertices, faces, cams, backend="open3d")

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.numpy()), o3d.core.Tensor(faces.numpy().astype(np.uint32)))
    origins, directions = cams.generate_rays()
    hits = scene.cast_rays(o3d.core.Tensor(torch.cat([origins, directions], -1).reshape(-1, 6).numpy()))
    expected_id = hits["primitive_ids"].numpy().astype(np.int64)
    expected_id[expected_id == o3d.t.geometry.RaycastingScene.INVALID_ID] = -1
    expected_depth = np.where(expected_id >= 0, hits["t_hit"].numpy(), 0.0)

    assert np.array_equal(fragments.triangle_id.reshape(-1).numpy(), expected_id)
    assert 0.2 < fragments.mask.float().mean() < 0.8
    np.testing.assert_allclose(fragments.depth.reshape(-1).numpy(), expected_depth, atol=2e-5)
    # barycentrics are a partition of unity and reproduce the hit point
    hit = fragments.mask[..., 0]
    assert torch.allclose(fragments.barycentrics[hit].sum(-1), torch.ones(()), atol=1e-5)
    points = interpolate(vertices, fragments, faces)
    assert torch.allclose(points[hit], fragments.points[hit], atol=1e-5)


@pytest.mark.parametrize("distance", [2.0, 3.5])
def test_depth_of_a_unit_sphere_at_the_centre_pixel_is_distance_minus_one(distance: float) -> None:
    vertices, faces = icosphere(5, 1.0)  # flat facets lie within 3e-4 of the sphere
    cams = cameras([0.0, 123.0, 250.0], [0.0, 41.0, -67.0], distance, 33)  # odd size: a pixel at the centre
    depth = rasterize(vertices, faces, cams).depth[:, 16, 16, 0]
    assert torch.allclose(depth, torch.full_like(depth, distance - 1.0), atol=1e-3)


def test_image_orientation_row_zero_is_top_and_column_zero_is_left() -> None:
    # small triangles above (+Y) and to the right (+X) of the origin, seen from the front (+Z)
    up = torch.tensor([[-0.05, 0.3, 0.0], [0.05, 0.3, 0.0], [0.0, 0.4, 0.0]])
    right = torch.tensor([[0.3, -0.05, 0.0], [0.4, 0.0, 0.0], [0.3, 0.05, 0.0]])
    vertices = torch.cat([up, right])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    fragments = rasterize(vertices, faces, cameras([0.0], [0.0], 2.0, 64))
    rows, cols = torch.nonzero(fragments.triangle_id[0] == 0, as_tuple=True)
    assert rows.float().mean() < 24 and 28 < cols.float().mean() < 36  # top centre
    rows, cols = torch.nonzero(fragments.triangle_id[0] == 1, as_tuple=True)
    assert cols.float().mean() > 40 and 28 < rows.float().mean() < 36  # right middle


@pytest.mark.parametrize("shape", ["ellipsoid", "fine_ellipsoid", "cube"])
def test_antialiased_opacity_approximates_pixel_coverage(shape: str) -> None:
    """Against 8x8 supersampled coverage on pixels the outline crosses: mean |error| < 0.04 (measured
    0.016-0.026) where the binary mask's is ~0.21-0.24."""
    if shape == "cube":
        box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
        vertices, faces = torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces)
    else:  # "fine": triangles much smaller than a pixel near the outline
        vertices, faces = icosphere(5 if shape == "fine_ellipsoid" else 3, 0.5)
        vertices = vertices * torch.tensor([1.0, 0.7, 1.2])
    cams = cameras([20.0], [25.0], 2.0, 48)
    antialiased = MeshRenderer()(vertices, faces, cams).opacity[0, ..., 0]
    binary = MeshRenderer(MeshRendererConfig(antialias=False))(vertices, faces, cams).opacity[0, ..., 0]
    fine = MeshRenderer(MeshRendererConfig(antialias=False))(vertices, faces, cams.with_resolution(48 * 8))
    coverage = torch.nn.functional.avg_pool2d(fine.opacity[0, ..., 0][None, None], 8)[0, 0]
    outline = (coverage > 0) & (coverage < 1)
    assert outline.sum() > 60
    antialiased_error = (antialiased - coverage)[outline].abs().mean()
    binary_error = (binary - coverage)[outline].abs().mean()
    assert antialiased_error < 0.04
    assert antialiased_error < binary_error / 4


def _random_blob(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vertices, faces = icosphere(1, 0.5, torch.float64)
    vertices = vertices + 0.03 * torch.randn(vertices.shape, generator=generator, dtype=torch.float64)
    colors = torch.rand(vertices.shape, generator=generator, dtype=torch.float64)
    direction = torch.randn(vertices.shape, generator=generator, dtype=torch.float64)
    return vertices, faces, colors, direction


def _texture_field(points: torch.Tensor) -> torch.Tensor:
    mixing = torch.tensor([[2.0, -1.0, 0.5], [0.3, 1.5, -2.0], [-1.0, 0.7, 1.2]], dtype=points.dtype)
    return torch.sigmoid(points @ mixing)


@pytest.mark.parametrize(
    ("shading", "albedo", "smooth_normals", "light"),
    [
        ("lambertian", "vertex", True, (0.3, 0.8, 0.5)),
        ("lambertian", "field", False, None),
        ("normal", None, True, None),
    ],
)
def test_render_gradients_match_central_finite_differences_including_silhouettes(
    shading: str, albedo: str | None, smooth_normals: bool, light: tuple | None
) -> None:
    """Per-pixel directional derivatives of rgb, opacity and depth w.r.t. all vertex positions.

    Tolerance: |autograd - finite difference| <= 1e-4 per pixel (float64, step 1e-6; derivatives
    reach ~100 on silhouette pixels). Holds as long as no pixel centre or antialiasing kink is within
    the step of an edge, which the fixed seed guarantees.
    """
    vertices, faces, colors, direction = _random_blob(0)
    albedo_source = {"vertex": colors, "field": _texture_field, None: None}[albedo]
    light_dir = None if light is None else torch.tensor(light, dtype=torch.float64)
    cams = cameras([20.0, 140.0], [15.0, -25.0], 2.0, 32)
    renderer = MeshRenderer(MeshRendererConfig(smooth_normals=smooth_normals))

    def render(points: torch.Tensor) -> torch.Tensor:
        out = renderer(points, faces, cams, albedo=albedo_source, shading=shading, light_dir=light_dir)
        return torch.cat([out.rgb, out.opacity, out.depth], dim=-1)

    _, analytic = torch.autograd.functional.jvp(render, (vertices,), (direction,))
    step = 1e-6
    numeric = (render(vertices + step * direction) - render(vertices - step * direction)) / (2 * step)
    assert (analytic - numeric).abs().max() < 1e-4

    image = render(vertices)
    silhouette = (image[..., 3] > 1e-6) & (image[..., 3] < 1 - 1e-6)
    assert silhouette.sum() >= 40
    # on the outline, opacity and depth move with the vertices (no gradient there without antialiasing)
    assert (numeric[..., 3][silhouette].abs() > 1e-2).float().mean() > 0.9
    assert (numeric[..., 4][silhouette].abs() > 1e-2).float().mean() > 0.9
    interior = image[..., 3] == 1
    assert (numeric[..., 4][interior].abs() > 1e-6).float().mean() > 0.9


def test_normal_shading_renders_world_space_normals_of_a_sphere() -> None:
    vertices, faces = icosphere(4, 0.5)
    cams = cameras([30.0], [20.0], 2.0, 48)
    render = MeshRenderer()(vertices, faces, cams, shading="normal", background=torch.zeros(3))
    fragments = rasterize(vertices, faces, cams)
    inside = render.opacity[..., 0] == 1
    expected = torch.nn.functional.normalize(fragments.points[inside], dim=-1)
    assert torch.allclose(render.rgb[inside] * 2 - 1, expected, atol=0.01)
    assert torch.allclose(render.normal[inside], expected, atol=0.01)
    assert render.rgb[render.opacity[..., 0] == 0].abs().max() == 0  # background


def test_empty_mesh_renders_only_background() -> None:
    render = MeshRenderer()(
        torch.zeros(0, 3),
        torch.zeros(0, 3, dtype=torch.int64),
        cameras([0.0], [0.0], 2.0, 16),
        background=torch.tensor([0.2, 0.4, 0.6]),
    )
    assert render.opacity.abs().max() == 0 and render.depth.abs().max() == 0
    assert torch.allclose(render.rgb, torch.tensor([0.2, 0.4, 0.6]).expand(1, 16, 16, 3))


def test_backend_choice_on_a_cpu_machine() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "open3d"
    with pytest.raises(DreamsmithError, match="nvdiffrast"):
        resolve_backend("nvdiffrast", torch.device("cpu"))
    with pytest.raises(DreamsmithError, match="unknown rasterizer backend"):
        resolve_backend("opengl", torch.device("cpu"))


@pytest.mark.parametrize("shape", ["sphere", "torus"])
def test_skipping_pairs_across_shared_front_facing_edges_changes_no_pixel_or_gradient(shape: str) -> None:
    """The walk from such a pair ends in the other pixel's triangle without a silhouette, so skipping it
    (most pairs on a fine mesh) leaves the antialiased image and its vertex gradients as they were (but
    for pixel centres within the edge tolerance of a silhouette, which these views do not have)."""
    from dreamsmith.renderers.raster_antialias import edge_antialias

    if shape == "sphere":
        vertices, faces = icosphere(4, 0.5)
    else:
        mesh = trimesh.creation.torus(0.35, 0.12, major_sections=48, minor_sections=24)
        vertices, faces = torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces)
    cams = cameras([10.0, 100.0, 230.0], [20.0, 60.0, -15.0], 2.0, 64)
    fragments = rasterize(vertices, faces, cams)
    colors = torch.rand(vertices.shape, generator=torch.Generator().manual_seed(0))
    image = torch.cat([interpolate(colors, fragments, faces), (fragments.triangle_id >= 0)[..., None].float()], -1)
    points = vertices.clone().requires_grad_(True)
    outputs = []
    for skip in (True, False):
        out = edge_antialias(image, fragments.triangle_id, fragments.depth, points, faces, cams, skip_shared_edges=skip)
        (gradient,) = torch.autograd.grad(out[..., 3].sum() + out[..., :3].square().sum(), points)
        outputs.append((out.detach(), gradient))
    (skipped, skipped_grad), (walked, walked_grad) = outputs
    assert (walked != image).any()  # the silhouette is antialiased at all
    assert torch.equal(skipped, walked)
    assert torch.equal(skipped_grad, walked_grad)
