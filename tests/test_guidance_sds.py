"""SDS: exact gradients against hand computations and exact oracle priors."""

from __future__ import annotations

import pytest
import torch
from oracles import GaussianOracle, SingleTargetOracle

from dreamsmith.errors import ConfigError
from dreamsmith.guidance import GUIDANCES, Guidance, SDSConfig, SDSGuidance
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput


def cameras_at(azimuth: list[float], elevation: list[float], resolution: int = 8) -> Cameras:
    return Cameras.from_spherical(
        torch.tensor(azimuth), torch.tensor(elevation), torch.tensor(2.0), torch.tensor(40.0), resolution
    )


def render_of(rgb: torch.Tensor) -> RenderOutput:
    batch, height, width, _ = rgb.shape
    return RenderOutput(
        rgb=rgb, opacity=torch.ones(batch, height, width, 1), depth=torch.ones(batch, height, width, 1)
    )


def rgb_grad_of(guidance: Guidance, rgb: torch.Tensor, cameras: Cameras, seed: int, **kwargs) -> torch.Tensor:
    rgb = rgb.detach().clone().requires_grad_(True)
    guidance(
        render_of(rgb), cameras, kwargs.pop("step", 0), torch.Generator().manual_seed(seed), **kwargs
    ).loss.backward()
    return rgb.grad


def test_sds_gradient_is_weighted_cfg_residual_of_the_real_unet(tiny_pixel_prior):
    prior = tiny_pixel_prior
    guidance = SDSGuidance(prior, SDSConfig(prompt="a red cube", guidance_scale=7.5))
    cameras = cameras_at([0.0, 100.0], [10.0, 70.0])
    rgb = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(3))
    grad = rgb_grad_of(guidance, rgb, cameras, seed=7)

    # The same draws, by hand: t ~ U{20..980}, then ε, from the run's generator.
    generator = torch.Generator().manual_seed(7)
    t = torch.randint(20, 981, (2,), generator=generator)
    eps = torch.randn(2, 3, 8, 8, generator=generator)
    z = 2 * rgb.permute(0, 3, 1, 2) - 1
    alpha_bar = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = alpha_bar.sqrt() * z + (1 - alpha_bar).sqrt() * eps
    cond = prior.encode_prompts(["a red cube, front view", "a red cube, overhead view"])
    uncond = prior.encode_prompts(["", ""])
    c2w = cameras.c2w.clone()
    c2w[:, :3, 3] /= 2.0
    labels = c2w.reshape(2, 16)
    with torch.no_grad():
        eps_cond = prior.unet(z_t, t, encoder_hidden_states=cond, class_labels=labels).sample
        eps_uncond = prior.unet(z_t, t, encoder_hidden_states=uncond, class_labels=labels).sample
    g = (1 - alpha_bar) * (eps_uncond + 7.5 * (eps_cond - eps_uncond) - eps)
    expected = (2 * g / 2).permute(0, 2, 3, 1)  # dz/drgb = 2, loss gradient = g / B
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-4)


def test_sds_runs_one_batched_cfg_call_and_reaches_the_render_through_the_vae(tiny_sd_prior):
    calls = []
    hook = tiny_sd_prior.unet.register_forward_hook(
        lambda module, args, output: calls.append(args[0].shape[0])
    )
    try:
        guidance = SDSGuidance(tiny_sd_prior, SDSConfig(prompt="a hamburger"))
        rgb = torch.rand(3, 16, 16, 3, requires_grad=True)
        out = guidance(
            render_of(rgb),
            cameras_at([0.0, 90.0, 180.0], [0.0, 0.0, 0.0]),
            0,
            torch.Generator().manual_seed(0),
        )
        out.loss.backward()
    finally:
        hook.remove()
    assert calls == [6]
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert set(out.logs) == {"loss", "timestep", "grad_norm", "guidance_scale"}
    assert 20 <= out.logs["timestep"] <= 980
    assert out.logs["loss"] == pytest.approx(0.5 * out.logs["grad_norm"] ** 2 / 3, rel=1e-4)


def single_target() -> tuple[torch.Tensor, SingleTargetOracle]:
    target_rgb = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(11))
    return target_rgb, SingleTargetOracle(2 * target_rgb.permute(2, 0, 1) - 1)


def test_single_target_gradient_has_zero_variance(tiny_sd_prior):
    target_rgb, oracle = single_target()
    guidance = SDSGuidance(oracle, SDSConfig(prompt="a cube", guidance_scale=100.0))
    rgb = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(5))
    cameras = cameras_at([0.0, 180.0], [0.0, 0.0])
    grads = [rgb_grad_of(guidance, rgb, cameras, seed=seed, timestep=400) for seed in (0, 1, 2)]
    alpha_bar = oracle.scheduler.alphas_cumprod[400]
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    g = sigma**2 * (alpha / sigma) * 2 * (rgb - target_rgb)  # w (α/σ)(z − z*), z = 2 rgb − 1
    expected = 2 * g / 2
    for grad in grads:
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)


def test_gradient_descent_with_a_single_target_oracle_converges_to_the_target():
    target_rgb, oracle = single_target()
    guidance = SDSGuidance(oracle, SDSConfig(prompt="a cube"))
    image = torch.nn.Parameter(torch.full((1, 8, 8, 3), 0.5))
    optimizer = torch.optim.SGD([image], lr=0.25)
    generator = torch.Generator().manual_seed(0)
    cameras = cameras_at([30.0], [15.0])
    for step in range(150):
        optimizer.zero_grad()
        guidance(render_of(image), cameras, step, generator).loss.backward()
        optimizer.step()
    assert (image.detach()[0] - target_rgb).abs().max() < 1e-2


def test_per_camera_targets_follow_the_cameras():
    targets = {0.0: torch.zeros(3, 4, 4), 180.0: torch.ones(3, 4, 4)}
    oracle = SingleTargetOracle(
        lambda cams: torch.stack([targets[a] for a in cams.azimuth.tolist()]), image_size=4
    )
    guidance = SDSGuidance(oracle, SDSConfig(prompt="a cube"))
    image = torch.nn.Parameter(torch.full((2, 4, 4, 3), 0.25))
    optimizer = torch.optim.SGD([image], lr=0.5)
    generator = torch.Generator().manual_seed(0)
    for step in range(150):
        optimizer.zero_grad()
        guidance(render_of(image), cameras_at([0.0, 180.0], [0.0, 0.0], 4), step, generator).loss.backward()
        optimizer.step()
    torch.testing.assert_close(
        image.detach(), torch.tensor([0.5, 1.0]).view(2, 1, 1, 1).expand(2, 4, 4, 3), atol=1e-2, rtol=0
    )


def test_sds_particles_collapse_to_the_gaussian_mean():
    generator = torch.Generator().manual_seed(0)
    mu = torch.rand(3, 4, 4, generator=generator) * 1.6 - 0.8
    s = 0.5
    guidance = SDSGuidance(GaussianOracle(mu, s), SDSConfig(prompt="x", guidance_scale=1.0))
    particles = torch.nn.Parameter(torch.rand(64, 4, 4, 3, generator=generator))
    optimizer = torch.optim.SGD([particles], lr=4.0)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1 / (1 + k / 50))
    cameras = cameras_at([0.0] * 64, [0.0] * 64, 4)
    for step in range(300):
        optimizer.zero_grad()
        guidance(render_of(particles), cameras, step, generator).loss.backward()
        optimizer.step()
        decay.step()
    z = 2 * particles.detach().permute(0, 3, 1, 2) - 1
    assert (z.mean(0) - mu).abs().max() < 0.02
    assert z.std(0).mean() < 0.1 * s  # the data's spread s is lost: SDS seeks the mode


def test_gradient_clip_and_nan_guard():
    target_rgb, oracle = single_target()
    rgb = torch.zeros(1, 8, 8, 3)
    cameras = cameras_at([0.0], [0.0])
    clipped = rgb_grad_of(SDSGuidance(oracle, SDSConfig(grad_clip=1e-3)), rgb, cameras, seed=0)
    assert clipped.abs().max().item() == pytest.approx(2e-3, rel=1e-4)
    scheduled = SDSGuidance(oracle, SDSConfig(grad_clip=[0, 1.0, 1e-3, 100]))
    assert rgb_grad_of(scheduled, rgb, cameras, seed=0, step=100).abs().max().item() == pytest.approx(
        2e-3, rel=1e-4
    )
    nan_oracle = SingleTargetOracle(torch.full((3, 8, 8), float("nan")))
    grad = rgb_grad_of(SDSGuidance(nan_oracle, SDSConfig()), rgb, cameras, seed=0)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_timestep_range_follows_its_schedule_and_the_engine_can_set_t():
    _, oracle = single_target()
    config = SDSConfig(min_step_percent=0.5, max_step_percent=[0, 0.98, 0.5, 100])
    guidance = SDSGuidance(oracle, config)
    rgb = torch.rand(4, 8, 8, 3)
    cameras = cameras_at([0.0] * 4, [0.0] * 4)
    assert guidance(render_of(rgb), cameras, 100, torch.Generator()).logs["timestep"] == 500
    assert guidance(render_of(rgb), cameras, 0, torch.Generator().manual_seed(0)).logs["timestep"] > 500
    assert guidance(render_of(rgb), cameras, 0, torch.Generator(), timestep=321).logs["timestep"] == 321


class RecordingOracle(SingleTargetOracle):
    def __init__(self, target: torch.Tensor) -> None:
        super().__init__(target)
        self.encoded: list[str] = []

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        self.encoded += prompts
        return super().encode_prompts(prompts)


@pytest.mark.parametrize(
    ("view_dependent", "expected"),
    [
        (True, ["a cube, front view", "a cube, back view", "a cube, overhead view", "no"]),
        (False, ["a cube", "no"]),
    ],
)
def test_prompts_depend_on_the_view_when_asked(view_dependent, expected):
    oracle = RecordingOracle(torch.zeros(3, 8, 8))
    config = SDSConfig(prompt="a cube", negative_prompt="no", view_dependent_prompting=view_dependent)
    guidance = SDSGuidance(oracle, config)
    for _ in range(2):
        guidance(
            render_of(torch.rand(3, 8, 8, 3)),
            cameras_at([0.0, 180.0, 90.0], [0.0, 0.0, 80.0]),
            0,
            torch.Generator(),
        )
    assert oracle.encoded == expected


def test_sds_has_no_trainable_state_and_is_registered():
    _, oracle = single_target()
    guidance = GUIDANCES["sds"](oracle, SDSConfig())
    assert isinstance(guidance, SDSGuidance) and GUIDANCES["sds"].config_class is SDSConfig
    assert guidance.state_dict() == {} and guidance.trainable_parameters() == []
    assert (guidance.views_per_group, guidance.timestep_mode) == (1, "random")
    assert (
        guidance.update(render_of(torch.rand(1, 8, 8, 3)), cameras_at([0.0], [0.0]), 0, torch.Generator())
        == {}
    )


def test_unknown_weighting_is_a_config_error():
    _, oracle = single_target()
    with pytest.raises(ConfigError, match="fantasia"):
        SDSGuidance(oracle, SDSConfig(weighting="sigma"))


def test_guidance_scale_schedule_uses_the_scale_of_the_current_step(tiny_pixel_prior):
    cameras = cameras_at([0.0], [20.0])
    rgb = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(5))
    scheduled = SDSGuidance(tiny_pixel_prior, SDSConfig(prompt="a red cube", guidance_scale=[0, 7.5, 2.0, 100]))

    def grad_at(guidance: SDSGuidance, step: int) -> torch.Tensor:
        return rgb_grad_of(guidance, rgb, cameras, seed=11, step=step)

    for step, scale in ((0, 7.5), (50, 4.75), (100, 2.0), (400, 2.0)):
        constant = SDSGuidance(tiny_pixel_prior, SDSConfig(prompt="a red cube", guidance_scale=scale))
        torch.testing.assert_close(grad_at(scheduled, step), grad_at(constant, step))
    assert not torch.allclose(grad_at(scheduled, 0), grad_at(scheduled, 100))
