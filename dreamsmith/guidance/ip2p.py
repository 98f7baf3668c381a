"""InstructPix2Pix guidance: score distillation towards an instruction, conditioned on the source asset.

InstructPix2Pix (Brooks et al. 2023, "InstructPix2Pix: Learning to Follow Image Editing Instructions")
is a text-to-image model whose UNet also reads the latents of the image being edited, concatenated to
z_t as extra input channels (8 for SD-based models, the new weights zero-initialised). For a 3D edit
the image is the render of a frozen copy of the source asset from the same cameras as the current
render (Instruct-NeRF2NeRF's condition, Haque et al. 2023), and the guided prediction is its
three-branch classifier-free guidance (eq. 3), through the distillation core's N-way combine::

    ε̂ = ε(z_t, ∅, ∅) + s_I (ε(z_t, I, ∅) − ε(z_t, ∅, ∅)) + s_T (ε(z_t, I, T) − ε(z_t, I, ∅))

The unconditional image is zero latents and the unconditional text the negative prompt, as in the
diffusers pipeline; the gradient is SDS's, w(t)(ε̂ − ε).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from torch import Tensor

from dreamsmith.configs import Range
from dreamsmith.errors import ConfigError
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner
from dreamsmith.guidance.distillation import Branch, DistillationState
from dreamsmith.guidance.sds import SDSConfig, SDSGuidance
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.schedules import ScheduleSpec, schedule_value


@dataclass
class IP2PConfig(SDSConfig):
    """InstructPix2Pix score distillation; the run's PROMPT is the instruction ("make it blue")."""

    guidance_scale: Annotated[ScheduleSpec, Range(0, None)] = 7.5
    """s_T, the instruction's guidance scale (InstructPix2Pix's default 7.5): a number or a schedule."""
    image_guidance_scale: Annotated[ScheduleSpec, Range(0, None)] = 1.5
    """s_I, how closely the edit follows the source image (the paper's 1.5; higher keeps more of the source)."""
    view_dependent_prompting: bool = False
    """Append view words to the instruction (off: an instruction is not a description of a view)."""


def image_condition(prior: Any, rgb: Tensor) -> Tensor:
    """InstructPix2Pix's image condition ``[B, C, h, w]`` of ``rgb [B, H, W, 3]`` in [0, 1]: the mode of the
    VAE posterior without the scaling factor (the diffusers pipeline's ``prepare_image_latents``); for a
    pixel model, the image itself at the model's size in [−1, 1]."""
    z = prior.encode_images(rgb, sample=False)
    if not prior.is_latent:
        return z
    _, _, scale, shift = prior.latent_space
    return z / scale + shift


class SourceImageLatents(Conditioner):
    """The source image's condition as extra input channels after z_t; zeros for the samples of the call
    that have no source image (the unconditional branch)."""

    def __init__(self, prior: Any) -> None:
        self.prior = prior

    def extra_input_channels(self, z_t: Tensor, context: ConditionContext) -> Tensor:
        batch, _, height, width = z_t.shape
        channels = z_t.new_zeros(batch, self.prior.image_channels, height, width)
        if context.source_image is None or context.source_mask is None or not context.source_mask.any():
            return channels
        mask = context.source_mask.to(z_t.device)
        latents = image_condition(self.prior, context.source_image.to(z_t.device)[mask])
        if latents.shape[1:] != channels.shape[1:]:
            raise ValueError(
                f"the source image's condition is {tuple(latents.shape[1:])}, the model reads "
                f"{tuple(channels.shape[1:])} after z_t"
            )
        channels[mask] = latents.to(channels)
        return channels


def check_image_model(prior: Any, method: str) -> None:
    """Refuse a text-only model for an image-conditioned method, naming the kind of model needed."""
    if getattr(prior, "image_channels", 0) <= 0:
        raise ConfigError(
            f"guidance {method} needs an InstructPix2Pix-style model whose UNet also reads the source image "
            f"(e.g. timbrooks/instruct-pix2pix: 8 input channels); this model is text-only (its UNet reads "
            f"{prior.latent_channels} channels)"
        )


class IP2PGuidance(SDSGuidance):
    """Score distillation on an InstructPix2Pix model, its image condition the source asset's render."""

    config_class = IP2PConfig
    needs_source = True

    def __init__(self, prior: Any, config: IP2PConfig, conditioners: Any = ()) -> None:
        check_image_model(prior, "ip2p")
        super().__init__(prior, config, [SourceImageLatents(prior), *conditioners])

    def branches(
        self, render: RenderOutput, cameras: Cameras, step: int, source: RenderOutput | None = None
    ) -> list[Branch]:
        """[ε(∅, ∅), ε(I, ∅) at s_I, ε(I, T) at s_T], I the source's render from the same cameras."""
        if source is None:
            raise ValueError("ip2p guidance needs the source asset's render from the same cameras (source=...)")
        config = self.config
        instruction = self.prompts.text_embeddings(config.prompt, self.view_directions(cameras))
        uncond = self.prompts.negative_embeddings(config.negative_prompt, len(cameras))
        image = source.rgb.detach()
        return [
            Branch("uncond", uncond),
            Branch("image", uncond, scale=schedule_value(config.image_guidance_scale, step), source_image=image),
            Branch("cond", instruction, scale=schedule_value(config.guidance_scale, step), source_image=image),
        ]

    def extra_logs(self, state: DistillationState) -> dict[str, float]:
        return {"image_guidance_scale": float(state.branches[1].scale)}
