"""Regional prompts: 3D regions parsed without torch, projected into views as masks, composited in
cross-attention (RPG); a full-image region with the base prompt, and an empty region, leave the model as it was."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from dreamsmith.errors import DreamsmithError
from dreamsmith.guidance.attention import attend, hooks_active
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.regional import RegionalCrossAttention, RegionalPrompts, region_masks
from dreamsmith.regions import HalfSpace, parse_region
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamsmith.renderers.outputs import RenderOutput


def test_region_grammar_reads_half_spaces_boxes_and_intersections():
    region = parse_region("y>0: a red cylinder")
    assert region.half_spaces == (HalfSpace(1, True, 0.0),) and region.prompt == "a red cylinder"
    assert parse_region(" x < -0.1 : a blue cube").half_spaces == (HalfSpace(0, False, -0.1),)
    box = parse_region("box(-0.2, 0, -0.3, 0.2, 0.5, 1e-1) & x>0.05: a door: red")
    assert box.prompt == "a door: red" and len(box.half_spaces) == 7
    points = np.array([[0.1, 0.2, 0.0], [-0.1, 0.2, 0.0], [0.1, 0.6, 0.0], [0.1, 0.2, 0.2]])
    assert box.contains(points).tolist() == [True, False, False, False]
    assert box.contains(torch.from_numpy(points)).tolist() == [True, False, False, False]


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("y>>0: red", "cannot read 'y>>0'"),
        ("w>0: red", "cannot read 'w>0'"),
        ("y>0", "is not 'EXPRESSION: PROMPT'"),
        ("y>0:   ", "is not 'EXPRESSION: PROMPT'"),
        ("box(0,0,0,1,1): red", "cannot read 'box(0,0,0,1,1)'"),
        ("box(0,0,0,1,-1,1): red", "each lower corner value below the upper one"),
        ("y>0 & : red", "cannot read ''"),
    ],
)
def test_a_region_that_does_not_parse_is_refused_in_one_line(spec, words):
    with pytest.raises(DreamsmithError) as error:
        parse_region(spec)
    assert words in str(error.value) and "\n" not in str(error.value)


def wall_render(resolution: int = 16) -> tuple[RenderOutput, Cameras]:
    """A 4 m square wall in the plane z = 0 seen from the front (azimuth 0, distance 2, fovy 40): it
    fills the view."""
    vertices = torch.tensor([[-2.0, -2, 0], [2, -2, 0], [2, 2, 0], [-2, 2, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cameras = Cameras.from_spherical(torch.tensor([0.0]), torch.tensor(0.0), torch.tensor(2.0),
                                     torch.tensor(40.0), resolution)
    render = MeshRenderer(MeshRendererConfig(antialias=False))(vertices, faces, cameras, shading="albedo")
    return render, cameras


def test_region_masks_are_the_pixels_whose_surface_lies_inside_for_a_known_camera():
    render, cameras = wall_render()
    assert bool((render.opacity > 0.5).all())
    masks = region_masks(render, cameras, [parse_region("y>0: a"), parse_region("x>0.3: b"),
                                           parse_region("box(-0.2,-0.2,-1,0.2,0.2,1): c")])
    centre = torch.arange(16) + 0.5 - 8  # pixel centres from the image centre; row 0 is the top
    focal = 8 / math.tan(math.radians(20))
    x_on_wall, y_on_wall = 2 * centre / focal, -2 * centre / focal  # the wall is 2 m away
    expected_top = (y_on_wall > 0)[:, None].expand(16, 16)
    expected_right = (x_on_wall > 0.3)[None, :].expand(16, 16)
    inner = y_on_wall.abs() < 0.2
    assert torch.equal(masks[0, 0].bool(), expected_top) and masks[0, 0, :8].all() and not masks[0, 0, 8:].any()
    assert torch.equal(masks[0, 1].bool(), expected_right)
    assert torch.equal(masks[0, 2].bool(), inner[:, None] & (x_on_wall.abs() < 0.2)[None, :])


def test_background_pixels_are_in_no_region():
    render, cameras = wall_render()
    render.opacity[:, :, :4] = 0.0
    masks = region_masks(render, cameras, [parse_region("y>-9: everywhere")])
    assert not masks[0, 0, :, :4].any() and masks[0, 0, :, 4:].all()


def cross_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(query_dim=8, cross_attention_dim=12, heads=2, dim_head=4).eval()


def test_each_token_mixes_its_regions_output_with_the_bases_by_base_ratio():
    attn = cross_attention()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, 8, generator=generator)  # a 4 x 4 layer
    base, sub = torch.randn(2, 5, 12, generator=generator), torch.randn(1, 5, 12, generator=generator)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4] = 1.0  # the top half of the image: the top two token rows
    hook = RegionalCrossAttention(sub, masks, base_ratio=0.25)
    with torch.no_grad():
        out = attend(attn, hidden, base, None, None, [hook])
        plain_base = attend(attn, hidden, base, None, None, [])
        plain_sub = attend(attn, hidden, sub.expand(2, -1, -1), None, None, [])
    torch.testing.assert_close(out[:, 8:], plain_base[:, 8:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :8], 0.25 * plain_base[:, :8] + 0.75 * plain_sub[:, :8], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def call(tiny_sd_prior):
    """One CFG call of two views (cond first, as the guidance orders it) of the wall."""
    generator = torch.Generator().manual_seed(0)
    render, _ = wall_render()
    cameras = Cameras.from_spherical(torch.tensor([0.0, 0.0]), torch.tensor(0.0), torch.tensor(2.0),
                                     torch.tensor(40.0), 16)
    render = RenderOutput(*(x.expand(2, -1, -1, -1) for x in (render.rgb, render.opacity, render.depth)))
    z_t = torch.randn(4, 4, 4, 4, generator=generator)
    t = torch.tensor([300, 600, 300, 600])
    embeds = tiny_sd_prior.encode_prompts(["a cat", "a cat", "", ""])
    context = ConditionContext(render=render, cameras=cameras, branch_labels=("cond", "cond", "uncond", "uncond"))
    return z_t, t, embeds, context


def regional(prior, specs: list[str], base_ratio: float) -> RegionalPrompts:
    regions = [parse_region(spec) for spec in specs]
    return RegionalPrompts(regions, prior.encode_prompts([r.prompt for r in regions]), base_ratio)


def test_one_full_image_region_with_the_base_prompt_equals_the_plain_prompt(tiny_sd_prior, call):
    z_t, t, embeds, context = call
    plain = tiny_sd_prior.predict_noise(z_t, t, embeds)
    full = regional(tiny_sd_prior, ["y>-9: a cat"], base_ratio=0.0)
    out = tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[full], context=context)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)


def test_an_empty_region_leaves_the_base_prompts_output(tiny_sd_prior, call):
    z_t, t, embeds, context = call
    plain = tiny_sd_prior.predict_noise(z_t, t, embeds)
    empty = regional(tiny_sd_prior, ["y>5: a red dog"], base_ratio=0.0)
    assert torch.equal(tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[empty], context=context), plain)
    masks = torch.zeros(4, 1, 16, 16)
    hook = RegionalCrossAttention(tiny_sd_prior.encode_prompts(["a red dog"]), masks, base_ratio=0.0)
    with hooks_active(tiny_sd_prior.unet, [hook]), torch.no_grad():  # the hook itself, on an empty mask
        out = tiny_sd_prior.unet(z_t, t, encoder_hidden_states=embeds, return_dict=False)[0]
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=0)


def test_a_region_changes_only_the_conditional_branch_and_base_ratio_one_undoes_it(tiny_sd_prior, call):
    z_t, t, embeds, context = call
    plain = tiny_sd_prior.predict_noise(z_t, t, embeds)
    out = tiny_sd_prior.predict_noise(z_t, t, embeds, context=context,
                                      conditioners=[regional(tiny_sd_prior, ["y>0: a red dog"], 0.0)])
    assert (out[:2] - plain[:2]).abs().max() > 1e-3
    torch.testing.assert_close(out[2:], plain[2:], atol=1e-5, rtol=0)
    kept = tiny_sd_prior.predict_noise(z_t, t, embeds, context=context,
                                       conditioners=[regional(tiny_sd_prior, ["y>0: a red dog"], 1.0)])
    assert torch.equal(kept, plain)
