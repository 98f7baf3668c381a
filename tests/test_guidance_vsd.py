"""VSD and DreamFlow against exact particle scores (no training): the limits the papers state, checked
to float precision, and the particle distribution they carry on a Gaussian prior."""

from __future__ import annotations

import pytest
import torch
from oracles import GaussianOracle

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.dreamflow import DreamFlowConfig, DreamFlowGuidance
from dreamsmith.guidance.lora import lora_names
from dreamsmith.guidance.sds import SDSConfig, SDSGuidance
from dreamsmith.guidance.vsd import VSDConfig, VSDGuidance
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput

MU, S = 0.4, 0.3  # the oracle's data: z ~ N(0.4, 0.3²) in model space (rgb = (z + 1) / 2)


class ExactParticles:
    """The exact score of the current particles seen as a Gaussian (per-channel mean and variance over
    the batch), or, with ``dirac``, of each particle alone (a point mass: ε_φ(z_t) = (z_t − α z)/σ)."""

    def __init__(self, prior, dirac: bool = False) -> None:
        self.prior, self.dirac, self.z = prior, dirac, None

    def eps(self, z_t, t, cameras):
        alpha, sigma = self.prior.alpha_sigma(t, z_t.shape[0])
        z = self.z.detach()
        if self.dirac:
            return (z_t - alpha * z) / sigma
        mean, var = z.mean(0, keepdim=True), z.var(0, keepdim=True, unbiased=False)
        return sigma * (z_t - alpha * mean) / (alpha**2 * var + sigma**2)

    def loss(self, z, cameras, generator):
        raise AssertionError("an exact particle score is not trained")

    def own_parameters(self):
        return []


class PriorAsParticle(ExactParticles):
    """q = p: the particle score is the prior's own guided prediction."""

    def eps(self, z_t, t, cameras):
        return self.prior.predict_noise(z_t, t, torch.zeros(1, 1, 1), cameras)


def oracle_guidance(cls, config_cls, particle_cls=None, dirac=False, **options):
    prior = GaussianOracle(torch.full((3, 1, 1), MU), S)
    config = config_cls(prompt="", guidance_scale=1.0, view_dependent_prompting=False, **options)

    class WithExactParticles(cls):
        def make_particle(self):
            return (particle_cls or ExactParticles)(self.prior, dirac=dirac)

    return WithExactParticles(prior, config)


def cameras(n: int) -> Cameras:
    return Cameras.from_spherical(torch.linspace(0, 300, n), torch.full((n,), 15.0), torch.tensor(2.0),
                                  torch.tensor(40.0), 1)


def z_gradient(guidance, rgb: torch.Tensor, seed: int, step: int = 0) -> torch.Tensor:
    """The gradient the guidance puts on z (= 2·rgb − 1), times the batch (undoing the loss's 1/B)."""
    rgb = rgb.detach().clone().requires_grad_(True)
    n = rgb.shape[0]
    if getattr(guidance, "particle", None) is not None:
        guidance.particle.z = 2 * rgb.detach().permute(0, 3, 1, 2) - 1
    render = RenderOutput(rgb=rgb, opacity=torch.ones(n, 1, 1, 1), depth=torch.ones(n, 1, 1, 1))
    out = guidance(render, cameras(n), step, torch.Generator().manual_seed(seed), guidance.timestep(step))
    out.loss.backward()
    return rgb.grad * n / 2


def start(n: int = 256, mean: float = 0.9, std: float = 0.05, seed: int = 0) -> torch.Tensor:
    """rgb ``[n, 1, 1, 3]`` whose z = 2·rgb − 1 ~ N(2·mean − 1, (2·std)²)."""
    return mean + std * torch.randn(n, 1, 1, 3, generator=torch.Generator().manual_seed(seed))


def test_a_single_particle_point_mass_makes_vsd_exactly_sds():
    rgb = start(8)
    vsd = oracle_guidance(VSDGuidance, VSDConfig, dirac=True)
    sds = SDSGuidance(vsd.prior, SDSConfig(prompt="", guidance_scale=1.0, view_dependent_prompting=False))
    for seed in range(3):
        assert torch.allclose(z_gradient(vsd, rgb, seed), z_gradient(sds, rgb, seed), atol=1e-5)


@pytest.mark.parametrize("cls, config_cls", [(VSDGuidance, VSDConfig), (DreamFlowGuidance, DreamFlowConfig)])
def test_particles_already_distributed_as_the_prior_get_a_zero_gradient(cls, config_cls):
    guidance = oracle_guidance(cls, config_cls, particle_cls=PriorAsParticle)
    for step in (0, 7, 30):
        assert torch.equal(z_gradient(guidance, start(8), seed=step, step=step), torch.zeros(8, 1, 1, 3))


def run_particles(guidance, rgb: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Plain gradient descent on the particles' z; returns the final z ``[n, 3]``."""
    z_of = lambda x: (2 * x - 1).reshape(x.shape[0], 3)  # noqa: E731
    for step in range(steps):
        grad = z_gradient(guidance, rgb, seed=step, step=step)
        rgb = rgb - lr * grad / 2  # a step of −lr·g on z
    return z_of(rgb)


def test_vsd_particles_keep_the_priors_spread_where_sds_collapses_them_to_the_mode():
    vsd = oracle_guidance(VSDGuidance, VSDConfig, weighting="uniform")
    sds = oracle_guidance(SDSGuidance, SDSConfig, weighting="uniform")
    z_vsd = run_particles(vsd, start(), steps=600, lr=0.02)
    z_sds = run_particles(sds, start(), steps=600, lr=0.02)
    assert abs(float(z_vsd.mean()) - MU) < 0.05 and abs(float(z_sds.mean()) - MU) < 0.05
    assert abs(float(z_vsd.std(0).mean()) - S) < 0.06  # the prior's spread
    assert float(z_sds.std(0).mean()) < 0.35 * S  # collapsed towards the mode


def apfo_limit(v: float, m: float, s_max: float, n: int = 20000) -> tuple[float, float]:
    """Where the continuous approximate flow takes N(m, v) (rgb units of z): integrate, in s = σ/α from
    s_max down to 0, the expected update dx/ds = s[(x − μ)/(S² + s²) − (x − m)/(v + s²)] of mean and variance."""
    mean, var = m, v
    grid = torch.linspace(s_max, 0.0, n + 1, dtype=torch.float64)
    for s, s_next in zip(grid[:-1].tolist(), grid[1:].tolist(), strict=True):
        ds = s_next - s
        pull = s * (1 / (S**2 + s * s) - 1 / (var + s * s))
        var, mean = var + 2 * pull * var * ds, mean + s * (mean - MU) / (S**2 + s * s) * ds
    return mean, var**0.5


@pytest.mark.parametrize("std", [0.05, 0.25])
def test_dreamflow_carries_gaussian_particles_along_its_flow_to_the_target_mean(std):
    """The mean reaches the prior's; the spread moves toward the prior's (narrower or wider) exactly as
    the continuous flow of this update rule predicts, but not all the way: scores taken at the render,
    not along the ODE path, are an approximation (see the module doc of dreamflow)."""
    levels, k = 60, 4
    flow = oracle_guidance(DreamFlowGuidance, DreamFlowConfig, t_start=0.98, t_end=0.0, levels=levels,
                           updates_per_level=k)
    z = run_particles(flow, start(std=std), steps=levels * k, lr=1.0 / k)
    alpha_bar = float(flow.prior.alphas_cumprod[flow.timestep(0).t])
    mean, spread = apfo_limit((2 * std) ** 2, 0.8, ((1 - alpha_bar) / alpha_bar) ** 0.5)
    assert abs(float(z.mean()) - MU) < 0.03 and abs(float(z.mean()) - mean) < 0.02
    assert abs(float(z.std(0).mean()) - spread) < 0.02
    assert abs(spread - S) < abs(2 * std - S)  # toward the prior's spread


def test_the_dreamflow_schedule_never_increases_and_is_a_function_of_the_step():
    flow = oracle_guidance(DreamFlowGuidance, DreamFlowConfig, t_start=1.0, t_end=0.2, levels=7, schedule_steps=40)
    times = [flow.timestep(step) for step in range(60)]
    assert all(a.t >= b.t and a.t_next <= a.t for a, b in zip(times, times[1:], strict=False))
    assert times[0].t == 999 and times[-1].t == round(0.2 * 1000 + 0.8 * 1000 / 7)
    again = oracle_guidance(DreamFlowGuidance, DreamFlowConfig, t_start=1.0, t_end=0.2, levels=7, schedule_steps=40)
    assert [again.timestep(step) for step in (33, 5, 17)] == [times[33], times[5], times[17]]


def test_an_increasing_dreamflow_schedule_is_refused():
    with pytest.raises(ConfigError, match="must not increase"):
        DreamFlowGuidance.check_config(DreamFlowConfig(t_start=0.2, t_end=0.8))


def test_the_particle_lora_and_camera_mlp_at_init_leave_the_model_bit_identical(tiny_sd_dir):
    from dreamsmith.guidance.loading import load_prior

    prior = load_prior(tiny_sd_dir)
    guidance = VSDGuidance(prior, VSDConfig(prompt="a hamburger"))
    assert guidance.particle.camera_kind == "mlp" and guidance.particle.adapter in lora_names(prior.unet)
    n = 2
    z_t = torch.randn(n, prior.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    base = prior.predict_noise(z_t, t, guidance.particle.embeds)
    assert torch.equal(guidance.particle.eps(z_t, t, cameras(n)), base)
    second = VSDGuidance(prior, VSDConfig(prompt="a hamburger"))  # a second stage sharing the model
    assert second.particle.adapter != guidance.particle.adapter
