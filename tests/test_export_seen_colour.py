"""The seen colour: the albedo a camera sees along the surface normal, composited and normalised by opacity."""

import math

import pytest
import torch
from export_shapes import ball, smooth_albedo

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.cleanup import cleanup
from dreamsmith.exporters.options import ExportOptions
from dreamsmith.exporters.pipeline import export_mesh
from dreamsmith.exporters.seen_colour import seen_albedo, seen_albedo_fn

SHELL, INTERIOR = 0.1, 0.9  # albedo of a dark surface shell and the bright interior below it


def layered_density(points):
    """A half-space z <= 0: density 2/m in a 0.1 m shell under the plane, 5/m below it."""
    z = points[:, 2]
    return torch.where(z > 0, 0.0, torch.where(z > -0.1, 2.0, 5.0))


def layered_albedo(points):
    z = points[:, 2:3].expand(-1, 3)
    return torch.where(z > -0.1, SHELL, INTERIOR)


def test_layered_half_space_gives_the_analytic_composite():
    points = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.0]])
    normals = torch.tensor([[0.0, 0.0, 1.0]] * 2)
    colour, opacity = seen_albedo(layered_density, layered_albedo, points, normals, outside=0.1, inside=0.4,
                                  samples=50)
    shell_weight = 1 - math.exp(-2 * 0.1)
    interior_weight = math.exp(-2 * 0.1) * (1 - math.exp(-5 * 0.3))
    expected = (shell_weight * SHELL + interior_weight * INTERIOR) / (shell_weight + interior_weight)
    assert torch.allclose(colour, torch.full((2, 3), expected), atol=1e-5)
    assert torch.allclose(opacity, torch.full((2,), shell_weight + interior_weight), atol=1e-5)
    # the surface point's own albedo is the dark shell's: what the bake read before
    assert layered_albedo(points)[0, 0] == SHELL and expected > 0.6


def test_empty_ray_keeps_the_albedo_at_the_point():
    points = torch.tensor([[0.0, 0.0, 0.5]])
    colour, opacity = seen_albedo(layered_density, layered_albedo, points, torch.tensor([[0.0, 0.0, 1.0]]),
                                  outside=0.1, inside=0.2, samples=16)
    assert opacity.item() == 0.0 and torch.equal(colour, layered_albedo(points))


def hard_ball_density(points):
    return torch.where(points.norm(dim=-1) < 0.35, 1e4, 0.0)


def test_opaque_field_keeps_its_surface_albedo():
    mesh = cleanup(ball(radius=0.35, resolution=40))
    corrected = seen_albedo_fn(mesh, hard_ball_density, smooth_albedo, outside=0.05, inside=0.3, samples=64)
    points = torch.from_numpy(mesh.vertices[::7]).float()
    # the first sample inside the ball takes the whole weight: a step of 0.35/64 m from the surface
    assert (corrected(points) - smooth_albedo(points)).abs().max() < 0.03


def translucent_density(points):
    """A faint ball (about 1/m, mostly transparent) whose surface sits in a thin shell."""
    radius = points.norm(dim=-1)
    return torch.where(radius < 0.35, 1.5, 0.0)


def translucent_albedo(points):
    """Dark within 2 cm of the ball's surface, white under it: the faint white objects' fields."""
    radius = points.norm(dim=-1, keepdim=True).expand(-1, 3)
    return torch.where(radius > 0.33, 0.05, 0.95)


def test_export_bakes_the_seen_colour_of_a_translucent_field(tmp_path):
    mesh = cleanup(ball(radius=0.34, resolution=32))
    common = dict(formats=("glb",), texture_size=128, preview_resolution=0)
    seen = export_mesh(mesh, translucent_albedo, tmp_path / "seen", ExportOptions(**common),
                       density=translucent_density)
    surface = export_mesh(mesh, translucent_albedo, tmp_path / "surface",
                          ExportOptions(**common, surface_colour="surface"), density=translucent_density)
    seen_texture = seen.mesh.base_color_texture.mean()
    assert surface.mesh.base_color_texture.mean() < 0.1  # the shell's albedo, as before
    assert seen_texture > 0.75  # what the field renders: mostly the white under the shell
    assert "seen_colour" in seen.timings and "seen_colour" not in surface.timings


def test_an_unknown_surface_colour_is_refused_in_one_line(tmp_path):
    with pytest.raises(DreamsmithError, match="export.surface_colour 'rendered' is unknown; choose seen or surface"):
        export_mesh(cleanup(ball(resolution=16)), smooth_albedo, tmp_path / "x",
                    ExportOptions(surface_colour="rendered", preview_resolution=0))
    assert not (tmp_path / "x").exists()
