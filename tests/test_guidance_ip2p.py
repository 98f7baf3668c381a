"""InstructPix2Pix guidance: the image-conditioned prior's extra channels and its three-branch guidance."""

from __future__ import annotations

import pytest
import torch

from dreamsmith.engine.presets import IMAGE_GUIDANCES, RAY_CHANNELS, check_model_fits, model_image_channels
from dreamsmith.errors import ConfigError
from dreamsmith.guidance import GUIDANCES
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.ip2p import IP2PConfig, IP2PGuidance, SourceImageLatents
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.priors import RAY_CHANNELS as PRIOR_RAY_CHANNELS
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.guidance.sds import SDSConfig, SDSGuidance
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput


def render_of(rgb: torch.Tensor) -> RenderOutput:
    batch, size = rgb.shape[:2]
    return RenderOutput(
        rgb=rgb, opacity=torch.ones(batch, size, size, 1), depth=torch.full((batch, size, size, 1), 2.0)
    )


def images(seed: int, batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(seed))


def cameras(batch: int = 2, size: int = 16) -> Cameras:
    return Cameras.from_spherical(
        torch.linspace(0, 90, batch), torch.full((batch,), 15.0), torch.tensor(2.0), torch.tensor(40.0), size
    )


def branch_predictions(guidance, source_seed: int, step: int = 0):
    """(branches, {label: ε}, guided ε) of one call on fixed z_t and t, the source rendered from ``source_seed``."""
    z_t = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([500, 300])
    render, source = render_of(images(1)), render_of(images(source_seed))
    branches = guidance.branches(render, cameras(), step, source)
    eps = guidance.predict(z_t, t, branches, render, cameras(), step)
    return z_t, t, branches, eps, guidance.combine(branches, eps, step)


def zero_initialised(prior: DiffusionPrior) -> DiffusionPrior:
    """``prior`` with its UNet widened to read 4 more input channels whose weights are zero."""
    unet8 = type(prior.unet).from_config({**prior.unet.config, "in_channels": 8})
    state = prior.unet.state_dict()
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], torch.zeros_like(state["conv_in.weight"])], 1)
    unet8.load_state_dict(state)
    unet8.requires_grad_(False).eval()
    return DiffusionPrior(unet8, prior.scheduler, prior.text_encoder, prior.tokenizer, vae=prior.vae)


def test_at_unit_scales_the_three_branches_give_the_image_and_text_conditioned_prediction(tiny_ip2p_dir):
    prior = load_prior(tiny_ip2p_dir)
    guidance = IP2PGuidance(prior, IP2PConfig(prompt="make it blue", guidance_scale=1.0, image_guidance_scale=1.0))
    z_t, t, branches, eps, guided = branch_predictions(guidance, source_seed=2)
    source = images(2)
    context = ConditionContext(source_image=source, source_mask=torch.ones(2, dtype=torch.bool))
    direct = prior.predict_noise(z_t, t, branches[-1].embeds, conditioners=guidance.conditioners, context=context)
    # the batched call's (I, T) branch is the direct call (a batch of 6 rounds differently from one of 2), and
    # ε_∅ + (ε_I − ε_∅) + (ε_IT − ε_I) is ε_IT up to the rounding of the two differences
    torch.testing.assert_close(eps["cond"], direct, atol=1e-6, rtol=0)
    torch.testing.assert_close(guided, eps["cond"], atol=1e-6, rtol=0)
    torch.testing.assert_close(guided, direct, atol=2e-6, rtol=0)
    assert not torch.allclose(eps["image"], direct, atol=1e-3)  # the branches differ: the identity is not trivial
    scaled = IP2PGuidance(prior, IP2PConfig(prompt="make it blue", guidance_scale=7.5, image_guidance_scale=1.5))
    _, _, _, eps, guided = branch_predictions(scaled, source_seed=2)
    expected = eps["uncond"] + 1.5 * (eps["image"] - eps["uncond"]) + 7.5 * (eps["cond"] - eps["image"])
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=0)


def test_zero_initialised_image_channels_leave_the_text_only_model_bit_for_bit(tiny_sd_prior):
    widened = zero_initialised(tiny_sd_prior)
    assert widened.image_channels == 4 and tiny_sd_prior.image_channels == 0
    z_t = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    embeds = tiny_sd_prior.encode_prompts(["make it blue"])
    context = ConditionContext(source_image=images(4, batch=3), source_mask=torch.ones(3, dtype=torch.bool))
    with_image = widened.predict_noise(z_t, 400, embeds, conditioners=[SourceImageLatents(widened)], context=context)
    assert torch.equal(with_image, tiny_sd_prior.predict_noise(z_t, 400, embeds))
    # so the whole guidance is SDS at s_T, whatever s_I and the source (ε_I = ε_∅; up to the rounding of a
    # batch of 6 against SDS's batch of 4)
    ip2p = IP2PGuidance(widened, IP2PConfig(prompt="make it blue", guidance_scale=7.5, image_guidance_scale=3.0))
    sds = SDSGuidance(
        tiny_sd_prior, SDSConfig(prompt="make it blue", guidance_scale=7.5, view_dependent_prompting=False)
    )
    grads = []
    for guidance, source in ((ip2p, render_of(images(2))), (sds, None)):
        rgb = images(1).requires_grad_(True)
        out = guidance(render_of(rgb), cameras(), 0, torch.Generator().manual_seed(5), source=source)
        out.loss.backward()
        grads.append(rgb.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_the_image_branch_follows_the_source_and_the_unconditional_one_ignores_it(tiny_ip2p_dir):
    guidance = IP2PGuidance(load_prior(tiny_ip2p_dir), IP2PConfig(prompt="make it blue"))
    _, _, _, first, _ = branch_predictions(guidance, source_seed=2)
    _, _, _, again, _ = branch_predictions(guidance, source_seed=2)
    _, _, _, other, _ = branch_predictions(guidance, source_seed=3)
    assert torch.equal(first["image"], again["image"])
    assert (first["image"] - other["image"]).abs().max() > 1e-3
    assert (first["cond"] - other["cond"]).abs().max() > 1e-3
    assert torch.equal(first["uncond"], other["uncond"])  # zero image latents, whatever the source


def test_a_text_only_model_is_refused_naming_the_model_it_needs(tiny_sd_prior, tiny_sd_dir, tiny_ip2p_dir):
    with pytest.raises(ConfigError, match="needs an InstructPix2Pix-style model .* text-only"):
        IP2PGuidance(tiny_sd_prior, IP2PConfig(prompt="make it blue"))
    # the same judgement from the folder's configs, before torch or the model loads
    assert model_image_channels(str(tiny_sd_dir)) == 0 == tiny_sd_prior.image_channels
    assert model_image_channels(str(tiny_ip2p_dir)) == 4 == load_prior(tiny_ip2p_dir).image_channels
    with pytest.raises(ConfigError, match="guidance ip2p needs an InstructPix2Pix-style model"):
        check_model_fits(str(tiny_sd_dir), "ip2p", "stage 'edit'")
    with pytest.raises(ConfigError, match="is an image-conditioned .* `dreamsmith edit"):
        check_model_fits(str(tiny_ip2p_dir), "sds", "stage 'coarse'")
    check_model_fits(str(tiny_ip2p_dir), "ip2p", "stage 'edit'")


def test_the_torch_free_tables_match_the_guidance_registry_and_the_prior():
    assert set(IMAGE_GUIDANCES) == {name for name, cls in GUIDANCES.items() if cls.needs_source}
    assert RAY_CHANNELS == PRIOR_RAY_CHANNELS


def test_without_the_source_render_the_call_is_refused(tiny_ip2p_dir):
    guidance = IP2PGuidance(load_prior(tiny_ip2p_dir), IP2PConfig(prompt="make it blue"))
    with pytest.raises(ValueError, match="needs the source asset's render"):
        guidance(render_of(images(1)), cameras(), 0, torch.Generator().manual_seed(0))
