"""Exact oracle priors: closed-form ideal denoisers behind the ``DiffusionPrior`` interface.

For data concentrated on one point z*, the ideal denoiser is ε*(z_t) = (z_t − α_t z*)/σ_t; for
Gaussian data N(μ, s²I), ε*(z_t) = σ_t(z_t − α_t μ)/(α_t² s² + σ_t²) (DESIGN.md, "Testing without a
GPU"). They work in pixel space (z = 2·rgb − 1, ``[B, C, H, W]``), ignore text and conditioners,
and take ᾱ_t from a real diffusers DDPMScheduler with Stable Diffusion's schedule.

Import from tests as ``from oracles import SingleTargetOracle, GaussianOracle``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def sd_scheduler() -> Any:
    """A DDPMScheduler with Stable Diffusion's scaled-linear schedule (T = 1000)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


class OraclePrior:
    """The parts of ``DiffusionPrior`` the engine and SDS use; subclasses define :meth:`eps`."""

    prediction_type = "epsilon"
    is_latent = False
    known_prompts = None
    camera_conditioning = None

    def __init__(self, image_size: int, channels: int = 3, scheduler: Any = None) -> None:
        self.scheduler = scheduler or sd_scheduler()
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.image_size = image_size
        self.latent_channels = channels
        self.metadata: dict[str, Any] = {}
        self.predict_calls = 0

    def encode_prompts(self, prompts: list[str]) -> Tensor:
        return torch.zeros(len(prompts), 1, 1)

    def encode_images(
        self, rgb: Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False
            )
        return 2 * x - 1

    def decode_latents(self, z: Tensor) -> Tensor:
        return ((z + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def alpha_sigma(self, t: Tensor | int, batch: int) -> tuple[Tensor, Tensor]:
        """α_t, σ_t as ``[B, 1, 1, 1]``."""
        alpha_bar = self.alphas_cumprod[torch.as_tensor(t).long().reshape(-1).expand(batch)]
        return alpha_bar.sqrt().view(-1, 1, 1, 1), (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)

    def predict_noise(
        self,
        z_t: Tensor,
        t: Tensor | int,
        text_embeds: Tensor,
        cameras: Any = None,
        conditioners: Sequence[Any] = (),
        context: Any = None,
        enable_grad: bool = False,
    ) -> Tensor:
        self.predict_calls += 1
        alpha, sigma = self.alpha_sigma(t, z_t.shape[0])
        return self.eps(z_t, alpha, sigma, cameras)

    def eps(self, z_t: Tensor, alpha: Tensor, sigma: Tensor, cameras: Any) -> Tensor:
        raise NotImplementedError


class SingleTargetOracle(OraclePrior):
    """The exact denoiser of data that is one image z*: ε*(z_t) = (z_t − α_t z*)/σ_t.

    target: z* ``[C, H, W]`` in model space (2·rgb − 1), or a callable ``cameras -> [n, C, H, W]``
    (e.g. a reference mesh rendered from each camera, mapped to 2·rgb − 1), tiled to the batch.
    """

    def __init__(
        self, target: Tensor | Callable[[Any], Tensor], image_size: int | None = None, **kwargs: Any
    ):
        if callable(target):
            if image_size is None:
                raise ValueError("a callable target needs image_size")
        else:
            image_size = target.shape[-1]
        super().__init__(image_size=image_size, **kwargs)
        self.target = target

    def targets(self, cameras: Any, batch: int) -> Tensor:
        """z* ``[batch, C, H, W]``."""
        if not callable(self.target):
            return self.target.expand(batch, -1, -1, -1)
        if cameras is None:
            raise ValueError("a per-camera target needs the cameras")
        target = self.target(cameras)
        return target.repeat(batch // target.shape[0], 1, 1, 1)

    def eps(self, z_t: Tensor, alpha: Tensor, sigma: Tensor, cameras: Any) -> Tensor:
        return (z_t - alpha * self.targets(cameras, z_t.shape[0])) / sigma


class GaussianOracle(OraclePrior):
    """The exact denoiser of Gaussian data N(μ, s²I): ε*(z_t) = σ_t(z_t − α_t μ)/(α_t² s² + σ_t²)."""

    def __init__(self, mu: Tensor, s: float, **kwargs: Any) -> None:
        super().__init__(image_size=mu.shape[-1], channels=mu.shape[0], **kwargs)
        self.mu = mu
        self.s = s

    def eps(self, z_t: Tensor, alpha: Tensor, sigma: Tensor, cameras: Any) -> Tensor:
        return sigma * (z_t - alpha * self.mu) / (alpha**2 * self.s**2 + sigma**2)
