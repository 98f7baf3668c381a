"""The pure math of score distillation: injection, CFG, ε ↔ v, weights, timesteps, schedules."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from omegaconf import OmegaConf

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.math import (
    alpha_sigma,
    cfg_combine,
    eps_from_v,
    inject_gradient,
    sample_timesteps,
    sanitize_grad,
    sds_grad,
    sds_weight,
    v_from_eps,
)
from dreamsmith.schedules import schedule_value


def test_injected_loss_has_gradient_grad_over_batch():
    torch.manual_seed(0)
    z = torch.randn(3, 4, 8, 8, requires_grad=True)
    grad = torch.randn(3, 4, 8, 8)
    loss = inject_gradient(z, grad)
    loss.backward()
    torch.testing.assert_close(z.grad, grad / 3, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, 0.5 * (grad**2).sum() / 3, atol=1e-4, rtol=1e-5)


def test_sds_grad_is_weighted_residual_per_sample():
    eps_pred = torch.full((2, 1, 2, 2), 3.0)
    eps = torch.ones(2, 1, 2, 2)
    grad = sds_grad(eps_pred, eps, torch.tensor([0.5, 2.0]))
    assert grad[0].unique().tolist() == [1.0]
    assert grad[1].unique().tolist() == [4.0]


def test_cfg_scale_one_is_the_conditional_prediction():
    torch.manual_seed(0)
    eps_cond, eps_uncond = torch.randn(2, 4, 4, 4).unbind(0)
    torch.testing.assert_close(cfg_combine(eps_cond, eps_uncond, 1.0), eps_cond, atol=1e-6, rtol=0)
    assert torch.equal(cfg_combine(eps_cond, eps_uncond, 0.0), eps_uncond)


def test_cfg_threestudio_scale_is_diffusers_scale_minus_one():
    torch.manual_seed(0)
    eps_cond, eps_uncond = torch.randn(2, 4, 4, 4).unbind(0)
    threestudio_scale = 100.0
    threestudio = eps_cond + threestudio_scale * (eps_cond - eps_uncond)
    torch.testing.assert_close(cfg_combine(eps_cond, eps_uncond, threestudio_scale + 1), threestudio)


def test_eps_v_round_trip_matches_scheduler_get_velocity():
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
    )
    generator = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 4, 8, 8, generator=generator)
    eps = torch.randn(5, 4, 8, 8, generator=generator)
    t = torch.tensor([0, 20, 500, 900, 999])
    v = scheduler.get_velocity(z0, eps, t)
    z_t = scheduler.add_noise(z0, eps, t)
    alpha, sigma = alpha_sigma(scheduler.alphas_cumprod, t)
    torch.testing.assert_close(eps_from_v(v, z_t, alpha, sigma), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_from_eps(eps, z_t, alpha, sigma), v, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        eps_from_v(v_from_eps(eps, z_t, alpha, sigma), z_t, alpha, sigma), eps, atol=1e-5, rtol=1e-5
    )


def test_sds_weights_follow_the_schedule():
    alphas_cumprod = DDPMScheduler().alphas_cumprod
    t = torch.tensor([10, 500, 980])
    alpha_bar = alphas_cumprod[t]
    torch.testing.assert_close(sds_weight("sds", alphas_cumprod, t), 1 - alpha_bar)
    assert torch.equal(sds_weight("uniform", alphas_cumprod, t), torch.ones(3))
    torch.testing.assert_close(sds_weight("fantasia", alphas_cumprod, t), alpha_bar.sqrt() * (1 - alpha_bar))
    with pytest.raises(ValueError, match="uniform"):
        sds_weight("sigma", alphas_cumprod, t)


def test_timesteps_cover_the_inclusive_integer_range_reproducibly():
    t = sample_timesteps(20000, 0.02, 0.98, 1000, torch.Generator().manual_seed(1))
    assert t.dtype == torch.long
    assert (t.min().item(), t.max().item()) == (20, 980)
    assert len(t.unique()) == 961
    again = sample_timesteps(20000, 0.02, 0.98, 1000, torch.Generator().manual_seed(1))
    assert torch.equal(t, again)
    assert sample_timesteps(100, 0.0, 1.0, 1000, torch.Generator().manual_seed(0)).max() <= 999
    assert sample_timesteps(4, 0.5, 0.5, 1000, torch.Generator()).tolist() == [500] * 4


def test_sanitize_grad_zeroes_non_finite_and_clamps():
    grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0, -0.5])
    assert sanitize_grad(grad, None).tolist() == [0.0, 0.0, 0.0, 3.0, -0.5]
    assert sanitize_grad(grad, 1.0).tolist() == [0.0, 0.0, 0.0, 1.0, -0.5]


def test_schedule_is_constant_outside_and_linear_between():
    spec = [100, 0.98, 0.5, 300]
    assert schedule_value(spec, 0) == 0.98
    assert schedule_value(spec, 100) == 0.98
    assert schedule_value(spec, 200) == pytest.approx(0.74)
    assert schedule_value(spec, 300) == 0.5
    assert schedule_value(spec, 10_000) == 0.5
    assert schedule_value(0.3, 5) == 0.3
    assert schedule_value(None, 5) is None
    assert schedule_value(OmegaConf.create({"s": spec}).s, 200) == pytest.approx(0.74)


def test_malformed_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="start_step"):
        schedule_value([0, 1.0, 2.0], 0)
