"""MVDream guidance: the x0-reconstruction loss against exact oracle priors, grouped cameras and timesteps,
and the real multi-view model call."""

from __future__ import annotations

import pytest
import torch
from oracles import GaussianOracle, SingleTargetOracle
from test_guidance_sds import cameras_at, render_of, rgb_grad_of

from dreamsmith.engine.camera_sampling import sample_cameras
from dreamsmith.engine.part_configs import CameraConfig
from dreamsmith.engine.presets import GUIDANCE_VIEWS
from dreamsmith.errors import ConfigError
from dreamsmith.guidance import GUIDANCES, SDSConfig, SDSGuidance
from dreamsmith.guidance.conditioners import tile_to_batch
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.math import group_std_rescale, x0_from_eps
from dreamsmith.guidance.mvdream import MVDreamConfig, MVDreamGuidance

GROUP = [0.0, 90.0, 180.0, 270.0]


class TwoPromptOracle(GaussianOracle):
    """Exact Gaussian denoisers with a different mean for the prompt and for the empty prompt, so the
    guided and the unguided predictions differ (the branch is read from the prompt embedding)."""

    views_per_group = 4

    def __init__(self, mu_cond: torch.Tensor, mu_uncond: torch.Tensor, s: float) -> None:
        super().__init__(mu_cond, s)
        self.mu_uncond = mu_uncond

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([[[0.0 if prompt == "" else 1.0]] for prompt in prompts])

    def predict_noise(self, z_t, t, text_embeds, cameras=None, conditioners=(), context=None, enable_grad=False):
        alpha, sigma = self.alpha_sigma(t, z_t.shape[0])
        cond = tile_to_batch(text_embeds, z_t.shape[0]).reshape(-1, 1, 1, 1)
        eps_cond = sigma * (z_t - alpha * self.mu) / (alpha**2 * self.s**2 + sigma**2)
        eps_uncond = sigma * (z_t - alpha * self.mu_uncond) / (alpha**2 * self.s**2 + sigma**2)
        return cond * eps_cond + (1 - cond) * eps_uncond

    def unguided_x0(self, z: torch.Tensor, seed: int, t: int) -> torch.Tensor:
        """The conditional x̂0 of the call that draws its noise from ``seed`` at fixed ``t``."""
        noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
        alpha, sigma = self.alpha_sigma(t, z.shape[0])
        z_t = alpha * z + sigma * noise
        eps = self.predict_noise(z_t, t, torch.ones(1, 1, 1))
        return x0_from_eps(z_t, eps, alpha.flatten(), sigma.flatten())


def two_prompt_oracle() -> TwoPromptOracle:
    generator = torch.Generator().manual_seed(3)
    return TwoPromptOracle(torch.rand(3, 8, 8, generator=generator) - 0.5,
                           torch.rand(3, 8, 8, generator=generator) * 0.2, s=0.3)


def mvdream(prior, **options) -> MVDreamGuidance:
    return MVDreamGuidance(prior, MVDreamConfig(prompt="a cube", **options))


def renders(groups: int = 2) -> torch.Tensor:
    return torch.rand(4 * groups, 8, 8, 3, generator=torch.Generator().manual_seed(5))


def test_with_no_rescale_the_x0_loss_is_sds_weighted_sigma_over_alpha():
    oracle = two_prompt_oracle()
    rgb, cameras = renders(), cameras_at(GROUP * 2, [15.0] * 8)
    got = rgb_grad_of(mvdream(oracle, recon_std_rescale=0.0, guidance_scale=7.5), rgb, cameras, seed=2, timestep=600)
    sds = SDSGuidance(oracle, SDSConfig(prompt="a cube", guidance_scale=7.5, weighting="uniform",
                                        view_dependent_prompting=False))
    uniform = rgb_grad_of(sds, rgb, cameras, seed=2, timestep=600)  # (ε̂ − ε) with the same t and noise
    alpha_bar = oracle.alphas_cumprod[600]
    torch.testing.assert_close(got, uniform * ((1 - alpha_bar) / alpha_bar).sqrt(), rtol=1e-5, atol=1e-6)
    assert got.abs().max() > 1e-3


@pytest.mark.parametrize("scale", [1.0, 7.5, 50.0])
@pytest.mark.parametrize("rescale", [0.0, 0.5, 1.0])
def test_a_single_target_oracle_gives_gradient_z_minus_target_for_any_cfg_scale(scale, rescale):
    target_rgb = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(11))
    oracle = SingleTargetOracle(2 * target_rgb.permute(2, 0, 1) - 1)
    oracle.views_per_group = 4
    guidance = mvdream(oracle, guidance_scale=scale, recon_std_rescale=rescale)
    rgb = renders()
    for seed in (0, 1):
        grad = rgb_grad_of(guidance, rgb, cameras_at(GROUP * 2, [10.0] * 4 + [40.0] * 4), seed=seed)
        z, z_target = 2 * rgb - 1, 2 * target_rgb - 1
        torch.testing.assert_close(grad, 2 * (z - z_target) / len(rgb), rtol=1e-4, atol=1e-5)  # dz/drgb = 2, 1/B


def test_full_rescale_gives_each_group_the_unguided_standard_deviation():
    oracle = two_prompt_oracle()
    rgb = renders()
    grad = rgb_grad_of(mvdream(oracle, recon_std_rescale=1.0, guidance_scale=50.0), rgb,
                       cameras_at(GROUP * 2, [15.0] * 8), seed=4, timestep=500)
    z = (2 * rgb - 1).permute(0, 3, 1, 2)
    x0_rescaled = z - grad.permute(0, 3, 1, 2) * len(rgb) / 2  # loss gradient on z is (z − x̂0′)/B
    x0_unguided = oracle.unguided_x0(z, seed=4, t=500)
    for group in range(2):
        views = slice(4 * group, 4 * group + 4)
        torch.testing.assert_close(x0_rescaled[views].std(), x0_unguided[views].std(), rtol=1e-4, atol=0)
    no_rescale = rgb_grad_of(mvdream(oracle, recon_std_rescale=0.0, guidance_scale=50.0), rgb,
                             cameras_at(GROUP * 2, [15.0] * 8), seed=4, timestep=500)
    x0_guided = z - no_rescale.permute(0, 3, 1, 2) * len(rgb) / 2
    assert abs(float(x0_guided[:4].std() / x0_unguided[:4].std()) - 1) > 0.1  # guidance did change the std


def test_group_rescale_is_per_group_and_interpolates_linearly():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(8, 4, 3, 3, generator=generator) * torch.tensor([3.0] * 4 + [0.5] * 4).view(8, 1, 1, 1)
    reference = torch.randn(8, 4, 3, 3, generator=generator)
    full = group_std_rescale(x0, reference, 4, r=1.0)
    for views in (slice(0, 4), slice(4, 8)):
        torch.testing.assert_close(full[views].std(), reference[views].std(), rtol=1e-5, atol=0)
    assert torch.equal(group_std_rescale(x0, reference, 4, r=0.0), x0)
    torch.testing.assert_close(group_std_rescale(x0, reference, 4, r=0.5), 0.5 * full + 0.5 * x0)


def test_one_timestep_per_group_of_four_views():
    oracle = two_prompt_oracle()
    rgb = renders(groups=3)
    guidance = mvdream(oracle)
    render = render_of(rgb.requires_grad_(True))
    out = guidance(render, cameras_at(GROUP * 3, [15.0] * 12), 0, torch.Generator().manual_seed(1))
    per_group = out.timesteps.reshape(3, 4)
    assert (per_group == per_group[:, :1]).all() and len(set(per_group[:, 0].tolist())) > 1


def test_grouped_cameras_are_ninety_degrees_apart_and_share_elevation_distance_and_fov():
    config = CameraConfig(batch_size=8, elevation_range=(0.0, 30.0), distance_range=(1.5, 2.0), fovy_range=(15.0, 60.0))
    cameras = sample_cameras(config, torch.Generator().manual_seed(0), views_per_group=4)
    azimuth = cameras.azimuth.reshape(2, 4)
    torch.testing.assert_close(azimuth.diff(dim=1), torch.full((2, 3), 90.0))
    for values in (cameras.elevation, cameras.distance, cameras.fovy):
        grouped = values.reshape(2, 4)
        assert (grouped == grouped[:, :1]).all() and grouped[0, 0] != grouped[1, 0]
    positions = cameras.c2w[:, :3, 3].reshape(2, 4, 3)
    cosine = torch.nn.functional.cosine_similarity(positions[:, 0, [0, 2]], positions[:, 1, [0, 2]], dim=-1)
    torch.testing.assert_close(cosine, torch.zeros(2), atol=1e-5, rtol=0)  # 90° apart seen from above


def test_a_single_view_model_is_refused_naming_the_model_it_needs(tiny_sd_prior):
    with pytest.raises(ConfigError, match="needs a multi-view model that denoises 4 views together.*convert mvdream"):
        mvdream(tiny_sd_prior)


def test_the_engine_knows_every_multi_view_guidance_without_torch():
    assert {name: cls.views_per_group for name, cls in GUIDANCES.items() if cls.views_per_group > 1} == GUIDANCE_VIEWS


def test_on_a_real_multi_view_model_each_views_gradient_depends_on_its_group(tiny_mv_dir):
    prior = load_prior(tiny_mv_dir)
    guidance = mvdream(prior)
    rgb = torch.rand(8, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    cameras = cameras_at(GROUP * 2, [15.0] * 8, 32)
    before = rgb_grad_of(guidance, rgb, cameras, seed=1, timestep=500)
    changed = rgb.clone()
    changed[1] = 1 - changed[1]  # another view of the first object
    after = rgb_grad_of(guidance, changed, cameras, seed=1, timestep=500)
    assert (after[0] - before[0]).abs().max() > 1e-6  # view 0 saw view 1
    assert torch.equal(after[4:], before[4:])  # the second object did not
    turned = rgb_grad_of(guidance, rgb, cameras_at([a + 45 for a in GROUP] * 2, [15.0] * 8, 32), seed=1, timestep=500)
    assert (turned - before).abs().max() > 1e-6  # the model reads the cameras
