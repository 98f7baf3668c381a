"""The distillation core every score-distillation method shares, one overridable step at a time.

One call, for a render x of the asset (DreamFusion, Poole et al. 2022, Sec. 3 and the methods after it)::

    z = encode(x)                                      encode()
    t = scheduled or drawn (one t per view group)      sample_t()
    z_t = α_t z + σ_t ε
    branches = [(label, prompt embeddings, scale)]     branches()      e.g. [uncond, cond]; + image (IP2P)
    ε_b = ε̂(z_t; branch b, t) for every b, one call   predict()
    ε̂ = ε_0 + Σ_k s_k (ε_k − ε_{k−1})                 combine()       N-way classifier-free guidance
    g = w(t) (ε̂ − target)                             gradient()      target(): −ε for SDS, ε_φ for VSD
    loss = ½‖z − sg(z − g)‖² / B                        (injected; see :mod:`dreamsmith.guidance.math`)

A method is a short subclass overriding the steps it changes: SDS only says its target is the noise
and its weight w(t); VSD's target is the particle score ε_φ; InstructPix2Pix adds an image branch;
MVDream replaces ``gradient`` with its x̂0 loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from dreamsmith.configs import Range, check_choices
from dreamsmith.guidance.base import Guidance, GuidanceOutput, detached
from dreamsmith.guidance.conditioner_registry import conditioner_options
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.math import (
    add_noise,
    alpha_sigma,
    cfg_chain,
    inject_gradient,
    reward_guidance,
    sanitize_grad,
    sds_grad,
    sds_weight,
)
from dreamsmith.guidance.prompts import PromptCache, view_direction
from dreamsmith.guidance.timesteps import ScheduledTimestep, sample_group_timesteps
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.schedules import ScheduleSpec, schedule_value

REWARD_BASE = "reward_base"
"""The prediction key of the fully conditioned branch with the reward-guided adapters at scale 0."""


@dataclass
class DistillationConfig:
    """Options every score-distillation method shares."""

    prompt: str = ""
    """The text prompt the renders should match (the run's PROMPT; not a config key)."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch of classifier-free guidance ("" = unconditional)."""
    guidance_scale: Annotated[ScheduleSpec, Range(0, None)] = 100.0
    """Classifier-free guidance scale s in ε_u + s(ε_y − ε_u) (threestudio's 100 is 101 here): a number
    or [start_step, start_value, end_value, end_step] (high early for shape, lower late for colour)."""
    weighting: Literal["sds", "uniform", "fantasia"] = "sds"
    """w(t): "sds" (σ_t²), "uniform" (1) or "fantasia" (α_t σ_t²)."""
    min_step_percent: Annotated[ScheduleSpec, Range(0, 1)] = 0.02
    """Lowest timestep as a fraction of T: a number or [start_step, start_value, end_value, end_step]."""
    max_step_percent: Annotated[ScheduleSpec, Range(0, 1)] = 0.98
    """Highest timestep as a fraction of T: a number or [start_step, start_value, end_value, end_step]."""
    grad_clip: Annotated[ScheduleSpec, Range(0, None)] = None
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
    conditioners: list[dict[str, Any]] = field(default_factory=list)
    """2D techniques on the model call, each ``{name: ..., ...options}`` (see ``dreamsmith presets``),
    e.g. ``[{name: controlnet, model: DIR, source: depth, scale: 1.0}]``."""


@dataclass
class Branch:
    """One classifier-free-guidance branch of the batched model call.

    label: its name (``"uncond"``, ``"cond"``, ``"image"``...), what conditioners see per sample;
    embeds: its prompt embeddings ``[B, L, D]``; scale: s_k, the weight of (ε_this − ε_previous) in
    :meth:`DistillationGuidance.combine` (ignored for the first branch); source_image: ``[B, H, W, 3]``
    the image this branch is conditioned on (InstructPix2Pix), or None.
    """

    label: str
    embeds: Tensor
    scale: float = 1.0
    source_image: Tensor | None = None


@dataclass
class DistillationState:
    """What one call computed, for the later steps (``gradient``, ``target``) and subclasses' logs."""

    z: Tensor
    noise: Tensor
    t: Tensor
    z_t: Tensor
    alpha: Tensor
    sigma: Tensor
    cameras: Cameras
    step: int
    branches: list[Branch]
    eps: dict[str, Tensor]
    eps_guided: Tensor
    scheduled: ScheduledTimestep | None


class DistillationGuidance(Guidance):
    """The shared core (see the module doc); subclasses override :meth:`target` and, when they need
    to, any other step."""

    config: DistillationConfig

    def __init__(self, prior: Any, config: DistillationConfig, conditioners: Any = ()) -> None:
        self.check_config(config)
        super().__init__(prior, config, conditioners)
        self.prompts = PromptCache(prior)

    @classmethod
    def check_config(cls, config: DistillationConfig, path: str = "guidance.") -> None:
        check_choices(config, path)
        for index, spec in enumerate(config.conditioners):
            conditioner_options(spec, f"{path}conditioners.{index}")

    # --- the steps ---------------------------------------------------------------------------------

    def encode(self, render: RenderOutput, generator: torch.Generator) -> Tensor:
        """z ``[B, C, h, w]`` of the render, differentiable."""
        return self.prior.encode_images(render.rgb, generator).float()

    def sample_t(
        self, batch: int, step: int, generator: torch.Generator, timestep: ScheduledTimestep | int | None
    ) -> Tensor:
        """Integer t ``[B]``: the engine's scheduled or fixed t, else one draw per group of views in the
        configured range."""
        if timestep is None:
            config = self.config
            t = sample_group_timesteps(
                batch,
                self.views_per_group,
                schedule_value(config.min_step_percent, step),
                schedule_value(config.max_step_percent, step),
                self.prior.num_train_timesteps,
                generator,
            )
        else:
            value = timestep.t if isinstance(timestep, ScheduledTimestep) else int(timestep)
            t = torch.full((batch,), value, dtype=torch.long)
        return t.to(self.prior.device)

    def view_directions(self, cameras: Cameras) -> list[str | None]:
        """Each camera's view suffix, or None everywhere without view-dependent prompting."""
        config = self.config
        if not config.view_dependent_prompting:
            return [None] * len(cameras)
        return view_direction(
            cameras.azimuth, cameras.elevation, config.front_threshold, config.back_threshold,
            config.overhead_threshold,
        )

    def branches(
        self, render: RenderOutput, cameras: Cameras, step: int, source: RenderOutput | None = None
    ) -> list[Branch]:
        """The CFG branches in combination order, first the base: [uncond, cond] at the scheduled scale
        (``source``: the edited asset's render, for methods that condition on it)."""
        config = self.config
        cond = self.prompts.text_embeddings(config.prompt, self.view_directions(cameras))
        uncond = self.prompts.negative_embeddings(config.negative_prompt, len(cameras))
        return [Branch("uncond", uncond), Branch("cond", cond, scale=schedule_value(config.guidance_scale, step))]

    def predict(
        self, z_t: Tensor, t: Tensor, branches: list[Branch], render: RenderOutput, cameras: Cameras, step: int
    ) -> dict[str, Tensor]:
        """ε̂ of every branch ``{label: [B, C, h, w]}`` from one batched prior call.

        The call holds the branches last first (the fully conditioned one first); the conditioners see
        each sample's branch label and source image in their context.
        """
        order = branches[::-1]
        batch = z_t.shape[0]
        labels = tuple(branch.label for branch in order for _ in range(batch))
        source_image = source_mask = None
        if any(branch.source_image is not None for branch in order):
            blank = torch.zeros_like(render.rgb)
            source_image = torch.cat([b.source_image if b.source_image is not None else blank for b in order])
            source_mask = torch.tensor([b.source_image is not None for b in order]).repeat_interleave(batch)
        context = ConditionContext(
            render=detached(render), cameras=cameras, step=step, branch_labels=labels,
            source_image=source_image, source_mask=source_mask,
        )
        eps = self.prior.predict_noise(
            torch.cat([z_t] * len(order)),
            torch.cat([t] * len(order)),
            torch.cat([branch.embeds for branch in order]),
            cameras=cameras if self.config.camera_conditioning else None,
            conditioners=self.conditioners,
            context=context,
        )
        predictions = {branch.label: chunk for branch, chunk in zip(order, eps.chunk(len(order)), strict=True)}
        if self.reward_scale():
            last = order[0]
            context = replace(context, branch_labels=labels[:batch],
                              source_image=None if source_image is None else source_image[:batch],
                              source_mask=None if source_mask is None else source_mask[:batch])
            base = [c.without_reward() if getattr(c, "reward_scale", 0.0) else c for c in self.conditioners]
            predictions[REWARD_BASE] = self.prior.predict_noise(
                z_t, t, last.embeds, cameras=cameras if self.config.camera_conditioning else None,
                conditioners=base, context=context)
        return predictions

    def reward_scale(self) -> float:
        """DCO's reward-guidance w: the largest a conditioner asks for (0: none)."""
        return max((getattr(c, "reward_scale", 0.0) for c in self.conditioners), default=0.0)

    def combine(self, branches: list[Branch], eps: dict[str, Tensor], step: int) -> Tensor:
        """N-way classifier-free guidance over the branches in order (see :func:`cfg_chain`), plus DCO's
        reward guidance against the fully conditioned branch with the reward-guided adapters off."""
        guided = cfg_chain([eps[b.label] for b in branches], [b.scale for b in branches[1:]])
        if REWARD_BASE not in eps:
            return guided
        return reward_guidance(guided, eps[branches[-1].label], eps[REWARD_BASE], self.reward_scale())

    def weight(self, state: DistillationState) -> Tensor:
        """w(t) ``[B]``."""
        return sds_weight(self.config.weighting, self.prior.alphas_cumprod, state.t)

    def target(self, state: DistillationState) -> Tensor:
        """What the guided prediction is pulled away from: the injected noise ε for SDS."""
        raise NotImplementedError

    def gradient(self, state: DistillationState) -> Tensor:
        """The gradient on z: w(t)(ε̂ − target)."""
        return sds_grad(state.eps_guided, self.target(state), self.weight(state))

    def extra_logs(self, state: DistillationState) -> dict[str, float]:
        """Numbers a method adds to the step's logs."""
        return {}

    # --- the call ----------------------------------------------------------------------------------

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        timestep: ScheduledTimestep | int | None = None,
        source: RenderOutput | None = None,
    ) -> GuidanceOutput:
        prior = self.prior
        z = self.encode(render, generator)
        t = self.sample_t(z.shape[0], step, generator, timestep)
        noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
        alpha, sigma = alpha_sigma(prior.alphas_cumprod, t)
        z_t = add_noise(z.detach(), noise, alpha, sigma)
        branches = self.branches(render, cameras, step, source)
        eps = self.predict(z_t, t, branches, render, cameras, step)
        state = DistillationState(
            z=z, noise=noise, t=t, z_t=z_t, alpha=alpha, sigma=sigma, cameras=cameras, step=step,
            branches=branches, eps=eps, eps_guided=self.combine(branches, eps, step),
            scheduled=timestep if isinstance(timestep, ScheduledTimestep) else None,
        )
        grad = sanitize_grad(self.gradient(state), schedule_value(self.config.grad_clip, step))
        loss = inject_gradient(z, grad)
        logs = {
            "loss": float(loss.detach()),
            "timestep": float(t.float().mean()),
            "grad_norm": float(grad.norm()),
            "guidance_scale": float(branches[-1].scale),
            **self.extra_logs(state),
        }
        return GuidanceOutput(loss=loss, logs=logs, latents=z.detach(), timesteps=t)
