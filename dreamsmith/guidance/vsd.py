"""Variational Score Distillation (ProlificDreamer, Wang et al. 2023).

∇θ = E_{t,ε}[ w(t)(ε_pretrain(z_t; y, t) − ε_φ(z_t; y, t, c)) ∂z/∂θ ]: the distillation core with the
particle score ε_φ (:mod:`dreamsmith.guidance.particle`) as its target in place of SDS's noise, and one
φ step on the detached renders after each asset step. With ε_φ the exact score of a single particle
(a point mass at z) ε_φ = ε and VSD is SDS; with ε_φ = ε_pretrain the gradient is zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from dreamsmith.configs import Range
from dreamsmith.guidance.base import GuidanceOutput
from dreamsmith.guidance.distillation import DistillationConfig, DistillationGuidance, DistillationState
from dreamsmith.guidance.particle import LoRAParticleScore, ParticleScoreConfig
from dreamsmith.guidance.prompts import PromptCache
from dreamsmith.guidance.training import GuidanceOptimConfig, GuidanceOptimizer
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.schedules import ScheduleSpec


@dataclass
class VSDConfig(DistillationConfig, ParticleScoreConfig):
    """Variational Score Distillation: the pretrained model at CFG 7.5 against a LoRA particle score."""

    guidance_scale: Annotated[ScheduleSpec, Range(0, None)] = 7.5
    """Classifier-free guidance scale of ε_pretrain (ProlificDreamer: 7.5)."""


class VSDGuidance(DistillationGuidance):
    """VSD: SDS's core with ε_φ as the target, and φ trained beside the asset with its own AdamW."""

    config_class = VSDConfig

    def __init__(self, prior: Any, config: VSDConfig, conditioners: Any = ()) -> None:
        super().__init__(prior, config, conditioners)
        self.particle = self.make_particle()
        parameters = self.particle.own_parameters()
        self.own_optimizer = GuidanceOptimizer(
            parameters, GuidanceOptimConfig(lr=config.lora_lr, warmup_steps=config.lora_warmup_steps)
        ) if parameters else None

    def make_particle(self) -> Any:
        """ε_φ: a LoRA on the prior (or on ``lora_model``); anything with ``eps(z_t, t, cameras)``,
        ``loss(z, cameras, generator)`` and ``own_parameters()`` will do (tests pass exact particle scores)."""
        config = self.config
        model = self.prior if config.lora_model is None else load_particle_model(
            config.lora_model, self.prior, config.allow_pickle)
        embeds = PromptCache(model).text_embeddings(config.prompt, [None])  # ε_φ sees the plain prompt
        return LoRAParticleScore(model, config, self, embeds)

    def target(self, state: DistillationState) -> Tensor:
        """ε_φ(z_t; y, t, c): the current renders' own score."""
        return self.particle.eps(state.z_t, state.t, state.cameras).to(state.eps_guided)

    def update(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        output: GuidanceOutput | None = None,
    ) -> dict[str, float]:
        """``lora_updates_per_step`` φ steps on the detached latents of this step's renders."""
        logs: dict[str, float] = {}
        for _ in range(self.config.lora_updates_per_step):
            logs = super().update(render, cameras, step, generator, output)
        return logs

    def training_loss(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        output: GuidanceOutput | None,
    ) -> Tensor:
        """φ's diffusion loss on the step's latents (reused from the forward pass when given)."""
        z = output.latents if output is not None and output.latents is not None else None
        if z is None:
            with torch.no_grad():
                z = self.encode(render, generator)
        return self.particle.loss(z, cameras, generator)


def load_particle_model(name: str, prior: Any, allow_pickle: bool = False) -> Any:
    """The second model carrying the LoRA (a folder or hub id; the engine resolves ``embedded:`` names),
    checked against the prior's latent space; within a run, the same object as a stage's prior of that model."""
    from dreamsmith.errors import ConfigError
    from dreamsmith.guidance.loading import load_run_model

    model = load_run_model(name, prior.device, allow_pickle)
    if model.latent_space != prior.latent_space:
        raise ConfigError(f"guidance.lora_model {name!r} ({model.family}) works in another space "
                          f"({model.latent_space_name}) than this stage's model ({prior.family}, "
                          f"{prior.latent_space_name}); give it a model of the same family")
    return model

