"""The guidance interface: what judges the renders, as the engine sees it.

One optimization step of the engine, for any guidance method::

    render = renderer(representation, cameras)            # cameras: B = groups × views_per_group
    out = guidance(render, cameras, step, generator, timestep)
    (out.loss + regularizers).backward(); optimizer.step()
    logs |= guidance.update(detached(render), cameras, step, generator)   # VSD's own step

Designed for the methods after SDS: VSD (trainable LoRA owned by the guidance, its own optimizer
step), DreamFlow (a decreasing timestep schedule driven by the engine, several updates per
timestep) and MVDream (cameras in groups of 4 the model sees at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput


@dataclass
class GuidanceOutput:
    """loss: scalar whose gradient w.r.t. the render is the guidance's update direction;
    logs: numbers worth showing (progress bar, report.json)."""

    loss: Tensor
    logs: dict[str, float]


class Guidance(torch.nn.Module):
    """Base of all guidance methods.

    Class attributes the engine reads:

    - ``config_class``: the dataclass configuring this guidance (``Guidance(prior, config)``).
    - ``views_per_group``: cameras arrive in groups of this many views the model sees at once
      (1 for SDS; MVDream: 4 views sharing an elevation, 90° apart in azimuth). The engine samples
      ``batch = groups × views_per_group`` cameras, group-major.
    - ``timestep_mode``: ``"random"``: the guidance samples t itself each call; ``"scheduled"``
      (DreamFlow): the engine passes ``timestep`` from a decreasing schedule and runs several
      updates per timestep.

    The frozen diffusion prior is held as a plain attribute, not a submodule, so ``state_dict()``
    holds only the guidance's own trainable state (e.g. VSD's LoRA) and checkpoints stay small.
    """

    config_class: ClassVar[type]
    views_per_group: ClassVar[int] = 1
    timestep_mode: ClassVar[str] = "random"

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        timestep: int | None = None,
    ) -> GuidanceOutput:
        """The guidance loss of ``render`` (from ``cameras``) at optimization ``step``.

        generator: the run's seeded generator (all noise and timesteps are drawn from it);
        timestep: the engine's timestep when ``timestep_mode == "scheduled"``, else None.
        """
        raise NotImplementedError

    def trainable_parameters(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (``{"params": [...], "lr": ...}``) of parameters the guidance
        trains itself (VSD's LoRA); [] when it trains none."""
        return []

    def update(
        self, render: RenderOutput, cameras: Cameras, step: int, generator: torch.Generator
    ) -> dict[str, float]:
        """The guidance's own optimizer step on detached renders, after the asset's step (VSD fits
        its LoRA to the current renders); returns logs. A no-op for guidances that train nothing."""
        return {}


def detached(render: RenderOutput) -> RenderOutput:
    """The same render cut from the autograd graph (what conditioners and ``update`` see)."""
    return RenderOutput(
        rgb=render.rgb.detach(),
        opacity=render.opacity.detach(),
        depth=render.depth.detach(),
        normal=None if render.normal is None else render.normal.detach(),
        losses={},
    )
