"""The particle score ε_φ: a model of the *current* renders' distribution, fitted while the asset trains
(ProlificDreamer's variational score, Wang et al. 2023, Sec. 4; DreamFlow reuses it).

ε_φ is the prior's UNet with a named LoRA (a copy of the prior at init: the adapter starts at zero), or a
second model's UNet with one, plus the camera: the prior's own camera class embedding when it has one
(the embedded toyworld prior), else a zero-initialised two-layer MLP of the flattened c2w added to the
time embedding (threestudio: Linear(16, D) → SiLU → Linear(D, D)). Each φ step is the diffusion loss
on the detached latents of the step's renders, t ~ U over the whole range, one noise draw per render,
the camera dropped (zeroed) with probability ``camera_dropout``. Scoring uses the view-independent prompt
and camera guidance ε_φ = ε_φ(∅) + s(ε_φ(c) − ε_φ(∅)) (s = 1: one call with the camera).

A v-prediction LoRA base is trained on the v-loss: the prior returns ε, and ε − ε* = α(v − v*) at fixed
z_t, so the ε-loss is weighted by 1/α_t² per sample.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from torch import Tensor

from dreamsmith.configs import Range
from dreamsmith.errors import ConfigError
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner
from dreamsmith.guidance.lora import LoRAConditioner, lora_names
from dreamsmith.guidance.math import add_noise, alpha_sigma, per_sample
from dreamsmith.guidance.priors import c2w16_labels
from dreamsmith.renderers.cameras import Cameras


@dataclass
class ParticleScoreConfig:
    """The LoRA particle score ε_φ (VSD, DreamFlow) and its own optimizer."""

    lora_rank: Annotated[int, Range(1, 1024)] = 4
    """Rank of the LoRA on the UNet's attention projections (diffusers' default 4)."""
    lora_alpha: Annotated[float | None, Range(1e-6, None)] = None
    """LoRA α (the update is scaled by α/rank); null: α = rank."""
    lora_model: str | None = None
    """A second model to put the LoRA on (a folder or a known name, same latent space as the prior);
    null: the prior itself (a copy of it, since the adapter starts at zero)."""
    camera_embedding: Literal["auto", "class", "mlp", "none"] = "auto"
    """How ε_φ sees the camera: "class" the model's own camera class embedding, "mlp" a new zero-initialised
    MLP into the time embedding, "auto" class when the model has one, else mlp; "none" not at all."""
    camera_dropout: Annotated[float, Range(0, 1)] = 0.1
    """Probability that a φ training sample's camera is replaced by zeros (ProlificDreamer: 0.1)."""
    lora_guidance_scale: Annotated[float, Range(0, None)] = 1.0
    """Camera guidance of ε_φ at scoring: ε_φ(∅) + s(ε_φ(c) − ε_φ(∅)); 1 = the camera-conditioned output."""
    lora_lr: Annotated[float, Range(1e-12, None)] = 1e-4
    """AdamW learning rate of φ after warm-up (ProlificDreamer: 1e-4)."""
    lora_warmup_steps: Annotated[int, Range(0, None)] = 500
    """Linear learning-rate warm-up of φ over this many updates (ProlificDreamer: 500)."""
    lora_updates_per_step: Annotated[int, Range(1, 64)] = 1
    """φ steps per asset step, each on the same detached renders with fresh t and noise."""
    allow_pickle: bool = False
    """Whether ``lora_model`` may load pickled weights; the engine sets it from the run's ``--allow-pickle``."""


class CameraMLP(torch.nn.Module):
    """c2w (flattened to 16) → Linear → SiLU → Linear into the time embedding, the last layer zero, so at
    init ε_φ equals the base model."""

    def __init__(self, width: int, camera_distance: float) -> None:
        super().__init__()
        self.camera_distance = camera_distance
        self.net = torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.SiLU(), torch.nn.Linear(width, width))
        torch.nn.init.zeros_(self.net[2].weight)
        torch.nn.init.zeros_(self.net[2].bias)

    def forward(self, c2w: Tensor) -> Tensor:
        return self.net(c2w16_labels(c2w.float(), self.camera_distance))


class CameraMLPConditioner(Conditioner):
    """Adds the camera MLP of the call's cameras (zero rows: dropped) to the time embedding."""

    def __init__(self, mlp: CameraMLP) -> None:
        self.mlp = mlp

    def time_embedding_delta(self, context: ConditionContext, batch: int) -> Tensor | None:
        if context.cameras is None:
            return None
        delta = self.mlp(context.cameras.c2w.to(next(self.mlp.parameters()).device))
        return delta.repeat(batch // delta.shape[0], 1)


def drop_cameras(cameras: Cameras, keep: Tensor) -> Cameras:
    """The same cameras with the c2w of every view where ``keep`` is False set to zeros (a dropped camera:
    its class label and MLP input are all zeros)."""
    c2w = cameras.c2w * keep.to(cameras.c2w).view(-1, 1, 1)
    return dataclasses.replace(cameras, c2w=c2w)


def free_adapter_name(unet: torch.nn.Module, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... when a guidance sharing this model already uses it."""
    taken = lora_names(unet)
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name


class LoRAParticleScore(torch.nn.Module):
    """ε_φ of the current renders: ``eps`` scores noisy latents, ``loss`` is one φ training objective.

    model: the prior carrying the LoRA (the guidance's prior or a second one); ``guidance`` installs the
    adapter through ``add_own_lora`` so the engine checkpoints it.
    """

    def __init__(self, model: Any, config: ParticleScoreConfig, guidance: Any, embeds: Tensor) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.embeds = embeds
        self.adapter = free_adapter_name(model.unet, "particle")
        self.lora_parameters = guidance.add_own_lora(self.adapter, config.lora_rank, config.lora_alpha, model.unet)
        kind = config.camera_embedding
        if kind == "auto":
            kind = "class" if getattr(model, "camera_conditioning", None) else "mlp"
        if kind == "class" and not getattr(model, "camera_conditioning", None):
            raise ConfigError("guidance.camera_embedding: 'class' needs a camera-conditioned model; "
                              "use 'mlp' or 'auto'")
        self.camera_kind = kind
        self.camera_mlp = (
            CameraMLP(time_embedding_width(model.unet), float(getattr(model, "camera_distance", 1.0)))
            if kind == "mlp" else None
        )

    def own_parameters(self) -> list[torch.nn.Parameter]:
        """What φ's optimizer trains: the LoRA and the camera MLP."""
        extra = [] if self.camera_mlp is None else list(self.camera_mlp.parameters())
        return [*self.lora_parameters, *extra]

    def _call(self, z_t: Tensor, t: Tensor, cameras: Cameras | None, enable_grad: bool) -> Tensor:
        conditioners: list[Conditioner] = [LoRAConditioner(self.adapter)]
        if self.camera_mlp is not None:
            conditioners.append(CameraMLPConditioner(self.camera_mlp))
        use_cameras = cameras if self.camera_kind != "none" else None
        model_cameras = use_cameras if self.camera_kind == "class" else None
        context = ConditionContext(cameras=use_cameras)
        return self.model.predict_noise(
            z_t, t, self.embeds, cameras=model_cameras, conditioners=conditioners, context=context,
            enable_grad=enable_grad,
        ).float()

    @torch.no_grad()
    def eps(self, z_t: Tensor, t: Tensor, cameras: Cameras) -> Tensor:
        """ε_φ(z_t; y, t, c) ``[B, C, h, w]`` with camera guidance at ``lora_guidance_scale``."""
        with_camera = self._call(z_t, t, cameras, enable_grad=False)
        scale = self.config.lora_guidance_scale
        if scale == 1.0 or self.camera_kind == "none":
            return with_camera
        dropped = drop_cameras(cameras, torch.zeros(len(cameras), dtype=torch.bool))
        without = self._call(z_t, t, dropped, enable_grad=False)
        return without + scale * (with_camera - without)

    def loss(self, z: Tensor, cameras: Cameras, generator: torch.Generator) -> Tensor:
        """The diffusion loss of φ on detached latents ``z`` ``[B, C, h, w]``: t ~ U{0..T−1}, one noise
        draw per render, cameras dropped with probability ``camera_dropout``."""
        model = self.model
        batch = z.shape[0]
        device = generator.device
        t = torch.randint(0, model.num_train_timesteps, (batch,), generator=generator, device=device)
        noise = torch.randn(z.shape, generator=generator, device=device).to(z)
        keep = torch.rand(batch, generator=generator, device=device) >= self.config.camera_dropout
        t, keep = t.to(model.device), keep.to(cameras.c2w.device)
        alpha, sigma = alpha_sigma(model.alphas_cumprod, t)
        z_t = add_noise(z.detach().float(), noise.float(), alpha, sigma)
        predicted = self._call(z_t, t, drop_cameras(cameras, keep), enable_grad=True)
        error = (predicted - noise.float()).pow(2).flatten(1).mean(1)
        if getattr(model, "prediction_type", "epsilon") == "v_prediction":
            error = error / per_sample(alpha, error).pow(2)
        return error.mean()


def time_embedding_width(unet: torch.nn.Module) -> int:
    """Width of the UNet's time embedding (what a camera MLP adds to)."""
    embedding = getattr(unet, "time_embedding", None)
    linear = getattr(embedding, "linear_2", None)
    if linear is None:
        raise ConfigError("guidance.camera_embedding: 'mlp' needs a UNet with a time embedding (diffusers "
                          "UNet2DConditionModel); use 'none'")
    return int(linear.out_features)
