"""What the try-on models share as texture sources: each view's garment region inpainted by a UNet that
reads the noisy latents, the region mask and the latents of the view with the region blanked, under
classifier-free guidance, a few views at a time at the model's own image size.

A model supplies ``conditions`` (its garment and text inputs for a chunk of views, computed once) and
``predict`` (its unconditional and conditional predictions stacked, for one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.tryon.garments import Garment
from dreamsmith.tryon.source import SourceResult, ViewBatch

BLANK = 0.5
"""What the inpainted region of the person image becomes before it is encoded: mid grey, 0 in the models'
[-1, 1] (diffusers' inpainting pipelines multiply the [-1, 1] image by the kept mask; StableVITON's agnostic
images are 128 there)."""


@dataclass
class InpaintInputs:
    """One chunk of views at the model's size: ``person [B, H, W, 3]``, ``mask [B, 1, h, w]`` (latent size, 1 to
    inpaint), ``masked [B, C, h, w]`` the latents of the person with the region blanked (to ``BLANK``),
    ``pose [B, 3, H, W]`` and ``dressed [B, 3, H, W]`` (the region's garment laid on the view, 0 elsewhere; None
    when unused)."""

    person: Tensor
    mask: Tensor
    masked: Tensor
    pose: Tensor
    dressed: Tensor | None


def garment_images(garments: list[Garment], size: int) -> Tensor:
    """The garments composited on white and resized to ``size``: ``[G, size, size, 3]``."""
    images = []
    for garment in garments:
        rgba = torch.from_numpy(garment.rgba)
        rgb = (rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])).permute(2, 0, 1)[None]
        images.append(F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)[0].permute(1, 2, 0))
    return torch.stack(images)


class InpaintingSource:
    """The shared frame (see the module doc). ``prior``: a :class:`~dreamsmith.guidance.priors.DiffusionPrior`
    whose VAE and scheduler the model uses; ``dresser``: an optional source whose answer is the garment laid
    on each view (a model that reads a warped garment gets it from the decal)."""

    name = "inpainting"

    def __init__(self, prior: Any, garments: list[Garment], steps: int, guidance_scale: float, chunk: int = 4,
                 seed: int = 0, dresser: Any = None) -> None:
        self.prior = prior
        self.garments = garments
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.chunk = chunk
        self.seed = seed
        self.dresser = dresser

    def conditions(self, inputs: InpaintInputs) -> Any:
        """The model's inputs for this chunk that do not change with the step."""
        raise NotImplementedError

    def predict(self, latents: Tensor, timestep: Tensor, inputs: InpaintInputs, conditions: Any) -> Tensor:
        """The unconditional and the conditional prediction, stacked ``[2B, C, h, w]``."""
        raise NotImplementedError

    @torch.no_grad()
    def edit(self, views: ViewBatch) -> SourceResult:
        generator = torch.Generator(device=self.prior.device).manual_seed(self.seed)
        mask = (views.region.amax(dim=1, keepdim=True) if views.region.shape[1]
                else views.opacity.new_zeros(len(views.rgb), 1, *views.rgb.shape[1:3]))
        mask = mask * views.opacity.permute(0, 3, 1, 2)
        pose = views.pose if views.pose is not None else ((views.normal + 1) / 2 * views.opacity).permute(0, 3, 1, 2)
        dressed = None if self.dresser is None else (self.dresser.edit(views).images.permute(0, 3, 1, 2) * mask)
        images = torch.cat([
            self._dress(views.rgb[i:i + self.chunk], mask[i:i + self.chunk], pose[i:i + self.chunk],
                        None if dressed is None else dressed[i:i + self.chunk], generator)
            for i in range(0, len(views.rgb), self.chunk)])
        images = F.interpolate(images.permute(0, 3, 1, 2), size=views.rgb.shape[1:3], mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1).to(views.rgb)
        return SourceResult(images, mask[:, 0].to(views.rgb))

    def model_tensor(self, image: Tensor, size: int | None = None, mode: str = "bilinear") -> Tensor:
        """``image [B, C, H, W]`` on the model's device and dtype, resized to ``size`` (default its image size)."""
        size = size or self.prior.image_size
        image = image.to(self.prior.device, self.prior.dtype)
        return F.interpolate(image, size=(size, size), mode=mode, **({} if mode == "nearest" else
                                                                      {"align_corners": False}))

    def latents_of(self, image: Tensor) -> Tensor:
        """VAE latents (posterior mean) of ``image [B, 3, H, W]`` in [0, 1]."""
        return self.prior.encode_images(image.permute(0, 2, 3, 1), sample=False)

    def _dress(self, rgb: Tensor, mask: Tensor, pose: Tensor, dressed: Tensor | None,
               generator: torch.Generator) -> Tensor:
        prior = self.prior
        person = self.model_tensor(rgb.permute(0, 3, 1, 2))
        small_mask = self.model_tensor(mask, mode="nearest")
        keep = (small_mask < 0.5).to(person)
        masked = self.latents_of(person * keep + BLANK * (1 - keep))
        inputs = InpaintInputs(person.permute(0, 2, 3, 1), F.interpolate(small_mask, size=masked.shape[-2:],
                                                                          mode="nearest"),
                               masked, self.model_tensor(pose), None if dressed is None else self.model_tensor(dressed))
        conditions = self.conditions(inputs)
        scheduler = prior.scheduler
        scheduler.set_timesteps(self.steps, device=prior.device)
        latents = torch.randn(masked.shape, generator=generator, device=prior.device, dtype=prior.dtype)
        latents = latents * scheduler.init_noise_sigma
        for timestep in scheduler.timesteps:
            current = scheduler.scale_model_input(latents, timestep)
            unconditional, conditional = self.predict(current, timestep, inputs, conditions).chunk(2)
            guided = unconditional + self.guidance_scale * (conditional - unconditional)
            latents = scheduler.step(guided, timestep, latents).prev_sample
        return prior.decode_latents(latents)
