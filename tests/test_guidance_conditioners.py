"""Conditioners: hooks on the prior's UNet call; at scale 0 (or at init) each is exactly the identity."""

from __future__ import annotations

import contextlib

import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import AttnProcessor2_0

from dreamsmith.guidance.conditioners import (
    ConditionContext,
    Conditioner,
    ControlNetConditioner,
    control_image_from_render,
    merge_unet_kwargs,
)
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput


def sphere_render(batch: int = 2, size: int = 16) -> RenderOutput:
    """A sphere-like render: a disk of opacity 1 whose depth grows away from the centre."""
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    radius2 = x**2 + y**2
    inside = (radius2 < 0.6).float()[None, :, :, None].expand(batch, -1, -1, -1)
    depth = (1.5 + radius2)[None, :, :, None].expand(batch, -1, -1, -1) * inside
    normal = torch.nn.functional.normalize(torch.stack([x, y, torch.ones_like(x)], -1), dim=-1)
    return RenderOutput(
        rgb=torch.rand(batch, size, size, 3),
        opacity=inside,
        depth=depth,
        normal=normal.expand(batch, -1, -1, -1) * inside,
    )


@pytest.fixture(scope="module")
def step_inputs(tiny_sd_prior):
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(4, 4, 4, 4, generator=generator)  # both CFG halves of 2 views
    t = torch.tensor([250, 700, 250, 700])
    embeds = tiny_sd_prior.encode_prompts(["a cat, front view", "a cat, side view", "", ""])
    cameras = Cameras.from_spherical(
        torch.tensor([0.0, 90.0]), torch.tensor(0.0), torch.tensor(2.0), torch.tensor(40.0), 16
    )
    context = ConditionContext(render=sphere_render(), cameras=cameras, step=3)
    return z_t, t, embeds, context


def perturbed(controlnet: ControlNetModel) -> ControlNetModel:
    """The ControlNet with its zero convolutions (and the condition embedding's output) made non-zero."""
    generator = torch.Generator().manual_seed(1)
    zero_convs = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
    return controlnet


@pytest.fixture(scope="module")
def trained_controlnet(tiny_sd_prior):
    return perturbed(ControlNetModel.from_unet(tiny_sd_prior.unet))


@pytest.mark.parametrize("source", ["depth", "normal", "opacity"])
def test_controlnet_is_exactly_the_identity_at_init_and_at_scale_zero(
    tiny_sd_prior, step_inputs, trained_controlnet, source
):
    prior = tiny_sd_prior
    z_t, t, embeds, context = step_inputs
    bare = prior.predict_noise(z_t, t, embeds)
    at_init = ControlNetConditioner(ControlNetModel.from_unet(prior.unet), source, scale=1.0)
    assert torch.equal(prior.predict_noise(z_t, t, embeds, conditioners=[at_init], context=context), bare)
    trained = trained_controlnet
    off = ControlNetConditioner(trained, source, scale=0.0)
    assert torch.equal(prior.predict_noise(z_t, t, embeds, conditioners=[off], context=context), bare)
    on = ControlNetConditioner(trained, source, scale=1.0)
    controlled = prior.predict_noise(z_t, t, embeds, conditioners=[on], context=context)
    assert (controlled - bare).abs().max() > 1e-3


def test_controlnet_residuals_scale_linearly_and_add_across_conditioners(
    tiny_sd_prior, step_inputs, trained_controlnet
):
    prior = tiny_sd_prior
    z_t, t, embeds, context = step_inputs
    trained = trained_controlnet
    full = prior.predict_noise(
        z_t, t, embeds, conditioners=[ControlNetConditioner(trained, "depth", 1.0)], context=context
    )
    halves = [ControlNetConditioner(trained, "depth", 0.5), ControlNetConditioner(trained, "depth", 0.5)]
    torch.testing.assert_close(
        prior.predict_noise(z_t, t, embeds, conditioners=halves, context=context), full, atol=1e-5, rtol=1e-5
    )


def test_depth_control_image_is_normalized_per_view_near_bright():
    render = sphere_render(batch=1)
    image = control_image_from_render(render, "depth", None)
    assert image.shape == (1, 3, 16, 16)
    inside = render.opacity[0, :, :, 0] > 0.5
    values = image[0, 0][inside]
    assert values.max().item() == pytest.approx(1.0) and values.min().item() == pytest.approx(0.0)
    centre, edge = image[0, 0, 7, 7].item(), image[0, 0, 7, 2].item()
    assert centre > edge  # the centre is nearest
    assert image[0, :, ~inside].abs().max() == 0
    farther = RenderOutput(rgb=render.rgb, opacity=render.opacity, depth=render.depth * 10)
    torch.testing.assert_close(control_image_from_render(farther, "depth", None), image)


def test_depth_control_image_reads_a_translucent_edge_at_its_surfaces_depth_not_near():
    # a flat wall at depth 2 whose edge pixel is 60% covered: the composited depth there is 0.6 * 2
    opacity = torch.tensor([1.0, 1.0, 0.6, 1.0]).reshape(1, 1, 4, 1)
    surface_depth = torch.tensor([2.0, 2.0, 2.0, 3.0]).reshape(1, 1, 4, 1)
    render = RenderOutput(rgb=torch.zeros(1, 1, 4, 3), opacity=opacity, depth=surface_depth * opacity)
    image = control_image_from_render(render, "depth", None)[0, 0, 0]
    assert image[2].item() == pytest.approx(image[0].item()) == pytest.approx(1.0)
    assert image[3].item() == pytest.approx(0.0)


def test_normal_control_image_is_in_camera_space():
    opacity = torch.ones(2, 1, 1, 1)
    world_x = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3).expand(2, 1, 1, 3)
    render = RenderOutput(rgb=torch.zeros(2, 1, 1, 3), opacity=opacity, depth=opacity, normal=world_x)
    cameras = Cameras.from_spherical(
        torch.tensor([0.0, 90.0]), torch.tensor(0.0), torch.tensor(2.0), torch.tensor(40.0), 1
    )
    image = control_image_from_render(render, "normal", cameras)[:, :, 0, 0]
    # From the front, world +X points to the camera's right; from azimuth 90 it faces the camera.
    torch.testing.assert_close(image, torch.tensor([[1.0, 0.5, 0.5], [0.5, 0.5, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(control_image_from_render(render, "opacity", None), torch.ones(2, 3, 1, 1))


class ResidualConditioner(Conditioner):
    def __init__(self, value: float, extra: dict | None = None) -> None:
        self.value = value
        self.extra = extra or {}

    def unet_kwargs(self, z_t, t, embeds, context):
        return {
            "mid_block_additional_residual": torch.full((1,), self.value),
            "down_block_additional_residuals": (torch.full((1,), self.value),) * 2,
            **self.extra,
        }


def test_unet_kwargs_merge_residuals_and_refuse_conflicts():
    merged = merge_unet_kwargs(
        [
            ResidualConditioner(1.0).unet_kwargs(None, None, None, None),
            ResidualConditioner(2.0).unet_kwargs(None, None, None, None),
        ]
    )
    assert merged["mid_block_additional_residual"].item() == 3.0
    assert [r.item() for r in merged["down_block_additional_residuals"]] == [3.0, 3.0]
    merged = merge_unet_kwargs(
        [{"cross_attention_kwargs": {"scale": 0.5}}, {"cross_attention_kwargs": {"mask": 1}}]
    )
    assert merged == {"cross_attention_kwargs": {"scale": 0.5, "mask": 1}}
    with pytest.raises(ValueError, match="scale"):
        merge_unet_kwargs(
            [{"cross_attention_kwargs": {"scale": 0.5}}, {"cross_attention_kwargs": {"scale": 1}}]
        )
    with pytest.raises(ValueError, match="timestep_cond"):
        merge_unet_kwargs([{"timestep_cond": 1}, {"timestep_cond": 2}])
    with pytest.raises(ValueError, match="class_labels"):
        merge_unet_kwargs([{"class_labels": 1}], reserved=("class_labels",))


class CountingAttention(Conditioner):
    """Swaps in a counting attention processor for the call, restores the originals after."""

    def __init__(self) -> None:
        self.calls = 0

    @contextlib.contextmanager
    def applied(self, unet):
        original = unet.attn_processors
        counter = self

        class Counting(AttnProcessor2_0):
            def __call__(self, *args, **kwargs):
                counter.calls += 1
                return super().__call__(*args, **kwargs)

        unet.set_attn_processor(Counting())
        try:
            yield
        finally:
            unet.set_attn_processor(original)


class ReplacePrompt(Conditioner):
    def __init__(self, embeds: torch.Tensor) -> None:
        self.embeds = embeds

    def transform_prompt_embeds(self, embeds, context):
        return self.embeds.expand_as(embeds)


def test_attention_and_prompt_hooks_apply_for_the_call_only(tiny_sd_prior, step_inputs):
    prior = tiny_sd_prior
    z_t, t, embeds, _ = step_inputs
    bare = prior.predict_noise(z_t, t, embeds)
    original = {name: type(p) for name, p in prior.unet.attn_processors.items()}
    counting = CountingAttention()
    assert torch.equal(prior.predict_noise(z_t, t, embeds, conditioners=[counting]), bare)
    assert counting.calls == len(original) == 8  # self + cross attention in 4 transformer blocks
    assert {name: type(p) for name, p in prior.unet.attn_processors.items()} == original
    other = prior.encode_prompts(["a dog"])
    replaced = prior.predict_noise(z_t, t, embeds, conditioners=[ReplacePrompt(other)])
    assert torch.equal(replaced, prior.predict_noise(z_t, t, other))


class ImageLatents(Conditioner):
    def __init__(self, latents: torch.Tensor) -> None:
        self.latents = latents

    def extra_input_channels(self, z_t, context):
        return self.latents.expand(z_t.shape[0], -1, -1, -1)


def test_zero_initialized_extra_input_channels_leave_the_output_unchanged(tiny_sd_prior, step_inputs):
    prior = tiny_sd_prior
    z_t, t, embeds, _ = step_inputs
    unet8 = type(prior.unet).from_config({**prior.unet.config, "in_channels": 8})
    state = prior.unet.state_dict()
    state["conv_in.weight"] = torch.cat(
        [state["conv_in.weight"], torch.zeros_like(state["conv_in.weight"])], 1
    )
    unet8.load_state_dict(state)
    unet8.requires_grad_(False).eval()
    pix2pix = DiffusionPrior(unet8, prior.scheduler, prior.text_encoder, prior.tokenizer, vae=prior.vae)
    assert pix2pix.latent_channels == 4
    image_latents = ImageLatents(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2)))
    out = pix2pix.predict_noise(z_t, t, embeds, conditioners=[image_latents])
    torch.testing.assert_close(out, prior.predict_noise(z_t, t, embeds), atol=1e-6, rtol=0)
