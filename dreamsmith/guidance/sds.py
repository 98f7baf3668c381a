"""Score Distillation Sampling (DreamFusion, Poole et al. 2022).

∇θ = E_{t,ε}[ w(t)(ε̂(z_t; y_view, t) − ε) ∂z/∂θ ], with classifier-free guidance, injected into
autograd with the detached-target trick (see :mod:`dreamsmith.guidance.math`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.base import Guidance, GuidanceOutput, detached
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner
from dreamsmith.guidance.math import (
    SDS_WEIGHTINGS,
    add_noise,
    alpha_sigma,
    cfg_combine,
    inject_gradient,
    sample_timesteps,
    sanitize_grad,
    sds_grad,
    sds_weight,
)
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.guidance.prompts import PromptCache, view_direction
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.schedules import ScheduleSpec, schedule_value


@dataclass
class SDSConfig:
    """Score Distillation Sampling."""

    prompt: str = ""
    """The text prompt the renders should match."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance ("" = unconditional)."""
    guidance_scale: ScheduleSpec = 100.0
    """Classifier-free guidance scale s in ε_u + s(ε_y − ε_u) (threestudio's 100 is 101 here): a number
    or [start_step, start_value, end_value, end_step] (high early for shape, lower late for colour)."""
    weighting: str = "sds"
    """w(t): "sds" (σ_t²), "uniform" (1) or "fantasia" (α_t σ_t²)."""
    min_step_percent: ScheduleSpec = 0.02
    """Lowest timestep as a fraction of T: a number or [start_step, start_value, end_value, end_step]."""
    max_step_percent: ScheduleSpec = 0.98
    """Highest timestep as a fraction of T: a number or [start_step, start_value, end_value, end_step]."""
    grad_clip: ScheduleSpec = None
    """Clamp the gradient on z to ±this (null: no clamp): a number or a schedule."""
    view_dependent_prompting: bool = True
    """Append ", front/side/back/overhead view" to the prompt depending on the camera."""
    front_threshold: float = 45.0
    """Cameras within this many degrees of azimuth 0 see the front."""
    back_threshold: float = 45.0
    """Cameras within this many degrees of azimuth 180 see the back."""
    overhead_threshold: float = 60.0
    """Cameras above this elevation (degrees) see the top."""
    camera_conditioning: bool = True
    """Pass the cameras to priors that are camera-conditioned (dreamsmith.json camera_conditioning)."""


class SDSGuidance(Guidance):
    """SDS with classifier-free guidance, view-dependent prompts and composable conditioners."""

    config_class = SDSConfig

    def __init__(
        self, prior: DiffusionPrior, config: SDSConfig, conditioners: Sequence[Conditioner] = ()
    ) -> None:
        super().__init__()
        if config.weighting not in SDS_WEIGHTINGS:
            raise ConfigError(
                f"guidance.weighting: unknown weighting {config.weighting!r}; "
                f"choose one of {', '.join(SDS_WEIGHTINGS)}"
            )
        self.prior = prior
        self.config = config
        self.conditioners = list(conditioners)
        self.prompts = PromptCache(prior)

    def view_directions(self, cameras: Cameras) -> list[str | None]:
        """Each camera's view suffix, or None everywhere without view-dependent prompting."""
        config = self.config
        if not config.view_dependent_prompting:
            return [None] * len(cameras)
        return view_direction(
            cameras.azimuth,
            cameras.elevation,
            config.front_threshold,
            config.back_threshold,
            config.overhead_threshold,
        )

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        timestep: int | None = None,
    ) -> GuidanceOutput:
        config, prior = self.config, self.prior
        batch = render.rgb.shape[0]
        z = prior.encode_images(render.rgb, generator).float()
        if timestep is None:
            t = sample_timesteps(
                batch,
                schedule_value(config.min_step_percent, step),
                schedule_value(config.max_step_percent, step),
                prior.num_train_timesteps,
                generator,
            )
        else:
            t = torch.full((batch,), int(timestep), dtype=torch.long)
        t = t.to(prior.device)
        eps = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
        alpha, sigma = alpha_sigma(prior.alphas_cumprod, t)
        z_t = add_noise(z.detach(), eps, alpha, sigma)

        cond = self.prompts.text_embeddings(config.prompt, self.view_directions(cameras))
        uncond = self.prompts.negative_embeddings(config.negative_prompt, batch)
        eps_pred = prior.predict_noise(
            torch.cat([z_t, z_t]),
            torch.cat([t, t]),
            torch.cat([cond, uncond]),
            cameras=cameras if config.camera_conditioning else None,
            conditioners=self.conditioners,
            context=ConditionContext(render=detached(render), cameras=cameras, step=step),
        )
        eps_cond, eps_uncond = eps_pred.chunk(2)
        w = sds_weight(config.weighting, prior.alphas_cumprod, t)
        scale = schedule_value(config.guidance_scale, step)
        grad = sds_grad(cfg_combine(eps_cond, eps_uncond, scale), eps, w)
        grad = sanitize_grad(grad, schedule_value(config.grad_clip, step))
        loss = inject_gradient(z, grad)
        logs = {
            "loss": float(loss.detach()),
            "timestep": float(t.float().mean()),
            "grad_norm": float(grad.norm()),
            "guidance_scale": float(scale),
        }
        return GuidanceOutput(loss=loss, logs=logs)
