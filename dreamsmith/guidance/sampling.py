"""2D samples from a prior (DDIM, Song et al. 2021): a personalized model's sample grid, DreamBooth's class
images, the benchmark's 2D check. Through ``predict_noise``, so adapters and cameras reach the UNet as they
do during score distillation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from dreamsmith.guidance.conditioners import ConditionContext, Conditioner
from dreamsmith.guidance.math import reward_guided_eps
from dreamsmith.renderers.cameras import Cameras


@torch.no_grad()
def ddim_sample(
    prior: Any,
    prompts: list[str],
    generator: torch.Generator,
    steps: int = 25,
    guidance_scale: float = 5.0,
    conditioners: Sequence[Conditioner] = (),
    cameras: Cameras | None = None,
    base_conditioners: Sequence[Conditioner] = (),
    reward_scale: float = 0.0,
    context: ConditionContext | None = None,
) -> Tensor:
    """Images ``[B, H, W, 3]`` in [0, 1] for ``prompts [B]`` (``cameras``: B cameras, tiled over both
    guidance branches; None: camera dropped). ``context``: what the conditioners read besides the call (the
    render a ControlNet is fed); its branch labels are set here ("cond" then "uncond").

    Text classifier-free guidance at ``guidance_scale``; with ``reward_scale`` w > 0, DCO's reward guidance
    (:func:`~dreamsmith.guidance.math.reward_guided_eps`) against the same UNet called with
    ``base_conditioners`` (the adapter at scale 0) in place of ``conditioners``.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(prior.scheduler.config)
    scheduler.set_timesteps(steps)
    count = len(prompts)
    embeds = prior.encode_prompts([*prompts, *([""] * count)])
    shape = (count, prior.latent_channels, prior.image_size, prior.image_size)
    if prior.is_latent:
        factor = 2 ** (len(prior.vae.config.block_out_channels) - 1)
        shape = (count, prior.latent_channels, prior.image_size // factor, prior.image_size // factor)
    z = torch.randn(shape, generator=generator, device=generator.device).to(prior.device)
    labels = ("cond",) * count + ("uncond",) * count
    both = replace(context or ConditionContext(), branch_labels=labels)
    for t in scheduler.timesteps:
        eps_cond, eps_uncond = prior.predict_noise(z.repeat(2, 1, 1, 1), t, embeds, cameras, conditioners,
                                                   both).chunk(2)
        eps_base = eps_cond
        if reward_scale:
            eps_base = prior.predict_noise(z, t, embeds[:count], cameras, base_conditioners,
                                           replace(both, branch_labels=labels[:count]))
        eps = reward_guided_eps(eps_uncond, eps_cond, eps_base, guidance_scale, reward_scale)
        z = scheduler.step(eps, t, z).prev_sample
    return prior.decode_latents(z)
