"""Score Distillation Sampling (DreamFusion, Poole et al. 2022).

∇θ = E_{t,ε}[ w(t)(ε̂(z_t; y_view, t) − ε) ∂z/∂θ ], with classifier-free guidance, injected into
autograd with the detached-target trick (see :mod:`dreamsmith.guidance.math`): the distillation core
with the injected noise as its target.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dreamsmith.guidance.distillation import DistillationConfig, DistillationGuidance, DistillationState


@dataclass
class SDSConfig(DistillationConfig):
    """Score Distillation Sampling."""


class SDSGuidance(DistillationGuidance):
    """SDS with classifier-free guidance, view-dependent prompts and composable conditioners."""

    config_class = SDSConfig

    def target(self, state: DistillationState) -> Tensor:
        """The noise ε that made z_t."""
        return state.noise
