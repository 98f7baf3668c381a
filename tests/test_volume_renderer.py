"""Volume rendering against closed-form answers, and gradient pruning that leaves the image exact."""

import math

import torch

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.volume import VolumeRenderer, VolumeRendererConfig, ray_cube_intersection
from dreamsmith.representations.background import Background, BackgroundConfig
from dreamsmith.representations.hashgrid import HashGridConfig
from dreamsmith.representations.nerf import NeRFConfig, NeRFField


class ConstantField(torch.nn.Module):
    """Density ``sigma`` inside a ball of radius ``radius``, zero outside; red albedo."""

    def __init__(self, sigma: float, radius: float) -> None:
        super().__init__()
        self.sigma, self.radius = sigma, radius

    def forward(self, points, with_normals=False):
        density = torch.where(points.norm(dim=-1) < self.radius, self.sigma, 0.0)
        albedo = torch.tensor([1.0, 0.0, 0.0]).expand(points.shape[0], 3)
        normal = torch.nn.functional.normalize(points, dim=-1) if with_normals else None
        return density, albedo, normal

    def density(self, points):
        return self(points)[0]


def front_camera(resolution=9):
    return Cameras.from_spherical(torch.tensor([0.0]), torch.tensor(0.0), torch.tensor(2.0), torch.tensor(30.0),
                                  resolution)


def test_ray_cube_intersection_distances():
    origins = torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 2.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far, hit = ray_cube_intersection(origins, directions, 1.0)
    assert torch.allclose(near[0], torch.tensor(1.0)) and torch.allclose(far[0], torch.tensor(3.0))
    assert hit.tolist() == [True, False]


def test_centre_pixel_opacity_matches_beer_lambert():
    sigma, radius = 2.0, 0.5
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=512, prune_threshold=0), bound=1.0)
    background = Background(BackgroundConfig(kind="solid", color=(0.0, 0.0, 1.0)))
    with torch.no_grad():
        out = renderer(ConstantField(sigma, radius), background, front_camera())
    expected = 1 - math.exp(-sigma * 2 * radius)  # the centre ray crosses a chord of length 2r
    assert abs(out.opacity[0, 4, 4, 0].item() - expected) < 5e-3
    # colour = red * opacity + blue background * (1 - opacity)
    rgb = out.rgb[0, 4, 4]
    assert abs(rgb[0].item() - expected) < 5e-3 and abs(rgb[2].item() - (1 - expected)) < 5e-3
    assert out.opacity[0, 0, 0, 0].item() == 0.0  # a corner ray misses the ball


def test_pruning_changes_pixels_by_less_than_its_bound_and_keeps_the_gradient():
    torch.manual_seed(0)
    config = NeRFConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=15))
    field = NeRFField(config)
    background = Background(BackgroundConfig(kind="solid"))
    cameras = front_camera(16)
    outputs, grads = [], []
    for threshold in (0.0, 1e-4):
        renderer = VolumeRenderer(VolumeRendererConfig(n_samples=48, prune_threshold=threshold), bound=1.0)
        field.zero_grad()
        out = renderer(field, background, cameras, shading="lambertian")
        (out.rgb * torch.linspace(0, 1, 3)).sum().backward()
        outputs.append(out.rgb.detach())
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters() if p.grad is not None]))
    assert (outputs[0] - outputs[1]).abs().max() < 48 * 1e-4  # bound: n_samples x prune_threshold
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > 0.99


def test_blob_initialization_renders_an_opaque_centre_and_empty_corners():
    field = NeRFField(NeRFConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=15)))
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=64), bound=1.0)
    with torch.no_grad():
        out = renderer(field, Background(BackgroundConfig(kind="solid")), front_camera(16), shading="lambertian")
    assert out.opacity[0, 8, 8, 0] > 0.99 and out.opacity[0, 0, 0, 0] < 0.05
    # the centre normal of a ball seen from +Z points at the camera
    assert out.normal[0, 8, 8, 2] > 0.95


def blob_field() -> NeRFField:
    torch.manual_seed(0)
    return NeRFField(NeRFConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=15)))


def test_occupancy_grid_keeps_the_blob_and_skips_the_empty_corners():
    field = blob_field()
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=64, grid_resolution=32), bound=1.0)
    assert renderer.occupancy.occupied_fraction() == 1.0  # never updated: nothing is skipped
    renderer.update_occupancy(field, 0)
    occupied = renderer.occupancy.is_occupied(torch.tensor([[0.0, 0.0, 0.0], [0.95, 0.95, 0.95], [0.3, -0.2, 0.1]]))
    assert occupied.tolist() == [True, False, True]
    assert 0.05 < renderer.occupancy.occupied_fraction() < 0.5
    # every skipped cell's sampled density is below the density that gives a visible alpha
    skipped = ~renderer.occupancy.occupied
    assert renderer.occupancy.cell_density[skipped].max() < renderer.skip_density()


def test_a_steeper_outer_blob_keeps_the_inside_and_lets_the_grid_skip_a_shallow_blobs_surroundings():
    """A shallow blob (density 2.5, the toy preset's) leaves visible alpha everywhere in the box; its own
    slope outside the radius empties the surroundings without changing anything inside."""
    hash_grid = HashGridConfig(n_levels=4, log2_hashmap_size=15)
    shallow = NeRFField(NeRFConfig(hash_grid=hash_grid, blob_density=2.5, bound=0.75))
    steep = NeRFField(NeRFConfig(hash_grid=hash_grid, blob_density=2.5, blob_outer_density=10.0, bound=0.75))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.5, 0.0, 0.0], [0.6, 0.0, 0.0], [0.7, 0.7, 0.7]])
    inside, outside = shallow.blob_bias(points), steep.blob_bias(points)
    assert torch.equal(inside[:3], outside[:3])  # the line inside the radius, and zero on it
    assert torch.allclose(outside[3:], 4.0 * inside[3:])  # four times as steep outside
    occupied = []
    for field in (shallow, steep):
        renderer = VolumeRenderer(VolumeRendererConfig(n_samples=32, grid_resolution=32), bound=0.75)
        renderer.update_occupancy(field, 0)
        occupied.append(renderer.occupancy.occupied_fraction())
    assert occupied[0] > 0.95 and occupied[1] < 0.8


def test_empty_space_skipping_changes_pixels_by_less_than_its_bound_and_keeps_the_gradient():
    field = blob_field()
    background = Background(BackgroundConfig(kind="solid"))
    cameras = Cameras.from_spherical(torch.tensor([0.0, 120.0]), torch.tensor(20.0), torch.tensor(1.8),
                                     torch.tensor(50.0), 24)
    outputs, grads = [], []
    for skip in (False, True):
        config = VolumeRendererConfig(n_samples=48, skip_empty=skip)
        renderer = VolumeRenderer(config, bound=1.0)
        renderer.update_occupancy(field, 0)
        field.zero_grad()
        out = renderer(field, background, cameras, shading="lambertian", generator=torch.Generator().manual_seed(4))
        (out.rgb * torch.linspace(0, 1, 3)).sum().backward()
        outputs.append(out.rgb.detach())
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters() if p.grad is not None]))
    assert (outputs[0] - outputs[1]).abs().max() < 48 * config.skip_alpha
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-6 * grads[0].abs().max())


def test_chunked_renders_equal_one_batch_render():
    field = blob_field()
    renderer = VolumeRenderer(VolumeRendererConfig(n_samples=32), bound=1.0)
    renderer.update_occupancy(field, 0)
    background = Background(BackgroundConfig(kind="solid"))
    cameras = Cameras.from_spherical(torch.tensor([0.0, 90.0]), torch.tensor(10.0), torch.tensor(2.0),
                                     torch.tensor(40.0), 12)
    with torch.no_grad():
        whole = renderer(field, background, cameras, shading="lambertian")
    chunked = renderer.render_chunked(field, background, cameras, chunk_points=32 * 4 * 7, shading="lambertian")
    for name in ("rgb", "opacity", "depth", "normal"):
        assert torch.allclose(getattr(whole, name), getattr(chunked, name), atol=1e-6), name
