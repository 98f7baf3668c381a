"""Texture sources projected into a UV texture: renders of a textured mesh project back to its own texture,
the most head-on view wins, unseen texels are reported and kept, and the fill pass moves only unfrozen texels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.stages import TextureRepresentation
from dreamsmith.exporters.bake import bake
from dreamsmith.exporters.uv import unwrap
from dreamsmith.regions import HalfSpace, Region
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.representations.uv_texture import UVTexture
from dreamsmith.toyworld.score import ground_truth_mesh
from dreamsmith.tryon.decal import DecalSource, decal_layers
from dreamsmith.tryon.garments import Garment
from dreamsmith.tryon.projection import project, texel_surface
from dreamsmith.tryon.source import SourceResult, render_views, view_cameras

SIZE = 64


@pytest.fixture(scope="module")
def sphere():
    """The toy sphere, unwrapped, with a smooth colour texture baked from a function of position."""
    mesh = unwrap(ground_truth_mesh("a blue sphere", 24).copy(vertex_colors=None), SIZE)
    colour = lambda p: 0.5 + 0.4 * torch.stack([torch.sin(6 * p[:, 0]), torch.cos(5 * p[:, 1]),  # noqa: E731
                                                torch.sin(4 * p[:, 2] + 1)], -1)
    texture = torch.from_numpy(bake(mesh, colour, SIZE))
    lookup = UVTexture(SIZE)
    lookup.logits.data = torch.logit(texture.clamp(1e-4, 1 - 1e-4))
    return mesh, texture, lookup


def views_of(mesh, lookup, cameras, regions=()):
    tensors = (torch.from_numpy(mesh.vertices), torch.from_numpy(mesh.faces), torch.from_numpy(mesh.uvs))
    return render_views(*tensors, lookup, cameras, list(regions))


def test_renders_of_a_textured_mesh_project_back_to_its_own_texture(sphere):
    mesh, texture, lookup = sphere
    views = views_of(mesh, lookup, view_cameras(mesh, 128))
    grey = torch.full_like(texture, 0.5)
    projection = project(mesh, grey, views, SourceResult(views.rgb, views.opacity[..., 0]))
    assert projection.seen.sum() == projection.covered.sum() > 500  # the rings and poles see the whole sphere
    error = (projection.texture - texture).abs().mean(-1)[projection.seen]
    assert error.mean() < 0.01 and error.max() < 0.08
    assert (projection.alpha[projection.seen] > 0.99).all()


def test_the_most_head_on_view_wins_and_views_blend_smoothly(sphere):
    mesh, texture, lookup = sphere
    cameras = Cameras.from_spherical(torch.tensor([0.0, 70.0]), torch.tensor(0.0), torch.tensor(2.0),
                                     torch.tensor(40.0), 96)
    views = views_of(mesh, lookup, cameras)
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    images = torch.stack([red.expand(96, 96, 3), blue.expand(96, 96, 3)])
    projection = project(mesh, torch.full_like(texture, 0.5), views, SourceResult(images, torch.ones(2, 96, 96)))
    covered, points, normals = texel_surface(mesh, SIZE, torch.device("cpu"))
    towards = torch.nn.functional.normalize(cameras.position.unsqueeze(1).unsqueeze(1) - points, dim=-1)
    cosine = (towards * normals).sum(-1)  # [2, S, S]
    seen = projection.seen
    both = seen & (cosine > 0.3).all(0)
    assert both.sum() > 20
    head_on = cosine.argmax(0)
    assert (projection.best_view[both] == head_on[both]).all()
    colour = projection.texture
    clearly_front = both & (cosine[0] - cosine[1] > 0.3)
    clearly_side = both & (cosine[1] - cosine[0] > 0.3)
    assert clearly_front.any() and clearly_side.any()
    assert (colour[clearly_front] - red).abs().max() < 0.05 and (colour[clearly_side] - blue).abs().max() < 0.05
    # across the boundary between the two views' territories the red share falls continuously
    margin = (cosine[0] - cosine[1])[both]
    share = colour[..., 0][both]
    order = margin.argsort()
    steps = (share[order][1:] - share[order][:-1]).abs()
    assert steps.max() < 0.25


def test_texels_no_view_sees_are_reported_and_kept(sphere):
    mesh, texture, lookup = sphere
    front = Cameras.from_spherical(torch.tensor([0.0]), torch.tensor(0.0), torch.tensor(2.0), torch.tensor(40.0), 96)
    views = views_of(mesh, lookup, front)
    painted = torch.zeros(1, 96, 96, 3)
    projection = project(mesh, texture, views, SourceResult(painted, views.opacity[..., 0]))
    covered, points, _ = texel_surface(mesh, SIZE, torch.device("cpu"))
    back = covered & (points[..., 2] < -0.05)
    assert back.any() and not projection.seen[back].any()
    assert (projection.best_view[covered & ~projection.seen] == -1).all()
    assert torch.equal(projection.texture[back], texture[back])  # kept exactly
    assert projection.texture[projection.seen & (projection.alpha > 0.999)].max() < 1e-4


def test_the_decal_paints_its_region_only(sphere):
    mesh, texture, lookup = sphere
    region = Region((HalfSpace(1, True, 0.0),), "stripes", "upper")
    rgba = np.zeros((8, 8, 4), np.float32)
    rgba[:, :, 1] = 1.0
    rgba[:, :, 3] = 1.0
    source = DecalSource(decal_layers([Garment(None, rgba)], [region], mesh.vertices))
    views = views_of(mesh, lookup, view_cameras(mesh, 96), [region])
    result = source.edit(views)
    inside = views.region[:, 0] > 0.5
    assert (result.confidence[~inside] == 0).all() and (result.confidence[inside] > 0.999).all()
    projection = project(mesh, texture, views, result)
    covered, points, _ = texel_surface(mesh, SIZE, torch.device("cpu"))
    green = torch.tensor([0.0, 1.0, 0.0])
    upper, lower = covered & (points[..., 1] > 0.05), covered & (points[..., 1] < -0.05)
    assert (projection.texture[upper] - green).abs().mean() < 0.02
    assert (projection.texture[lower] - texture[lower]).abs().max() < 1e-5


def test_frozen_texels_never_move_and_survive_a_checkpoint(tmp_path, sphere):
    config = make_config("a blue sphere", preset="toy-texture", overrides=["uv_texture.texture_size=16"])
    representation = TextureRepresentation(config.stages[0], torch.device("cpu"))
    mesh = sphere[0]
    representation._set_mesh(mesh)
    frozen = torch.zeros(16, 16, dtype=torch.bool)
    frozen[:8] = True
    representation.freeze(frozen)
    before = representation.texture.logits.detach().clone()
    optimizer = torch.optim.Adam([representation.texture.logits], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        representation.texture.image().sum().backward()
        optimizer.step()
    after = representation.texture.logits.detach()
    assert torch.equal(after[:8], before[:8]) and (after[8:] != before[8:]).all()
    copy = TextureRepresentation(config.stages[0], torch.device("cpu"))
    copy.load_state_dict(representation.state_dict())
    assert torch.equal(copy.frozen, frozen)


def test_two_garments_each_paint_their_own_region(sphere):
    mesh, texture, lookup = sphere
    upper = Region((HalfSpace(1, True, 0.0),), "shirt", "upper")
    lower = Region((HalfSpace(1, False, 0.0),), "skirt", "lower")
    colours = [np.array([1.0, 0.0, 0.0], np.float32), np.array([0.0, 0.0, 1.0], np.float32)]
    garments = [Garment(None, np.concatenate([np.broadcast_to(c, (4, 4, 3)), np.ones((4, 4, 1), np.float32)], -1))
                for c in colours]
    source = DecalSource(decal_layers(garments, [upper, lower], mesh.vertices))
    views = views_of(mesh, lookup, view_cameras(mesh, 96), [upper, lower])
    projection = project(mesh, texture, views, source.edit(views))
    covered, points, _ = texel_surface(mesh, SIZE, torch.device("cpu"))
    for inside, colour in ((covered & (points[..., 1] > 0.05), colours[0]), (covered & (points[..., 1] < -0.05),
                                                                              colours[1])):
        assert (projection.texture[inside] - torch.from_numpy(colour)).abs().mean() < 0.02
