"""StyleAligned shared attention: identities that hold exactly (or to rounding), and that it does something."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.conditioner_registry import build_conditioners, conditioner_options
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.math import adain, add_noise, alpha_sigma
from dreamsmith.guidance.style_aligned import StyleAligned


@pytest.fixture(scope="module")
def call():
    generator = torch.Generator().manual_seed(4)
    return (torch.randn(1, 4, 4, 4, generator=generator), torch.tensor([300, 800]),
            torch.randn(2, 16, 32, generator=generator), generator)


def test_adain_to_itself_is_the_identity_and_matches_the_reference_statistics():
    x, ref = torch.randn(2, 3, 10, 4), 3 + 2 * torch.randn(2, 3, 7, 4)
    torch.testing.assert_close(adain(x, x), x, atol=1e-5, rtol=0)
    out = adain(x, ref)
    torch.testing.assert_close(out.mean(-2), ref.mean(-2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-2), ref.var(-2), atol=1e-3, rtol=1e-3)


def test_an_asset_that_is_the_reference_gets_the_models_own_prediction(tiny_sd_prior, call):
    """AdaIN to its own statistics is the identity, and attending to every key twice leaves softmax attention
    as it was: the prediction of a sample equal to the noised reference is the base model's."""
    z_ref, t, text, _ = call
    style = StyleAligned(z_ref, tiny_sd_prior.alphas_cumprod, 4, seed=7, scale=0.6)
    step = 12
    alpha, sigma = alpha_sigma(tiny_sd_prior.alphas_cumprod, t)
    z_t = add_noise(z_ref.expand(2, -1, -1, -1), style.reference_noise(step).expand(2, -1, -1, -1), alpha, sigma)
    shared = tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[style], context=ConditionContext(step=step))
    base = tiny_sd_prior.predict_noise(z_t, t, text)
    torch.testing.assert_close(shared, base, atol=1e-5, rtol=0)
    other = tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[style], context=ConditionContext(step=step + 1))
    assert (other - base).abs().max() > 1e-3  # another step's reference noise: no longer the same image


def test_another_reference_changes_the_prediction_and_leaves_the_model_untouched(tiny_sd_prior, call):
    z_ref, t, text, generator = call
    z_t = torch.randn(2, 4, 4, 4, generator=generator)
    base = tiny_sd_prior.predict_noise(z_t, t, text)
    style = StyleAligned(z_ref, tiny_sd_prior.alphas_cumprod, 4)
    shared = tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[style])
    assert (shared - base).abs().max() > 1e-3
    assert "forward" not in tiny_sd_prior.unet.__dict__
    assert torch.equal(tiny_sd_prior.predict_noise(z_t, t, text), base)  # nothing left behind, bit for bit
    off = StyleAligned(z_ref, tiny_sd_prior.alphas_cumprod, 4, scale=0.0)
    assert torch.equal(tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[off]), base)
    half = StyleAligned(z_ref, tiny_sd_prior.alphas_cumprod, 4, scale=0.5)
    halfway = tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[half])
    assert (halfway - base).abs().max() > 1e-4
    assert (halfway - shared).abs().max() > 1e-4
    without_adain = StyleAligned(z_ref, tiny_sd_prior.alphas_cumprod, 4, adain_queries=False, adain_keys=False)
    assert not torch.equal(tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[without_adain]), shared)


def test_the_conditioner_is_built_from_an_image_and_refuses_a_missing_one(tmp_path, tiny_sd_prior, call):
    from PIL import Image

    _, t, text, generator = call
    Image.fromarray(np.full((20, 20, 3), (240, 128, 25), np.uint8)).save(tmp_path / "orange.png")
    spec = {"name": "style_aligned", "image": str(tmp_path / "orange.png")}
    style, = build_conditioners([spec], tiny_sd_prior)
    assert style.reference_latent.shape == (1, 4, 4, 4)
    z_t = torch.randn(2, 4, 4, 4, generator=generator)
    assert (tiny_sd_prior.predict_noise(z_t, t, text, conditioners=[style])
            - tiny_sd_prior.predict_noise(z_t, t, text)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="does not exist"):
        conditioner_options({"name": "style_aligned", "image": str(tmp_path / "none.png")}, "guidance.conditioners.0")
