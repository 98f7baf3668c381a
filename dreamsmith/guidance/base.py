"""The guidance contract: what judges the renders, as the engine sees it.

One optimization step of the engine, for any guidance method::

    scheduled = guidance.timestep(step)                    # None, or (t, t_next) from its schedule
    render = renderer(representation, cameras)            # cameras: B = groups × views_per_group
    out = guidance(render, cameras, step, generator, scheduled, source=source_render)   # source: edits only
    (out.loss + regularizers).backward(); asset_optimizer.step()
    logs |= guidance.update(detached(render), cameras, step, generator, out)   # its own training

A guidance that trains parameters of its own (VSD's and DreamFlow's LoRA particle score) owns their
optimizer (:mod:`dreamsmith.guidance.training`): they never join the asset's optimizer, and the
engine checkpoints them through :meth:`Guidance.checkpoint_state`. ``update`` receives the forward
pass's output (its latents, timesteps) so nothing is encoded twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.conditioners import Conditioner
from dreamsmith.guidance.lora import add_lora, load_lora_state_dict, lora_state_dict
from dreamsmith.guidance.timesteps import ScheduledTimestep
from dreamsmith.guidance.training import GuidanceOptimizer
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput


@dataclass
class GuidanceOutput:
    """loss: scalar whose gradient w.r.t. the render is the guidance's update direction;
    logs: numbers worth showing (progress bar, report.json); latents: the render's z ``[B, C, h, w]``,
    detached; timesteps: ``[B]`` integer t of each view (what ``update`` reuses)."""

    loss: Tensor
    logs: dict[str, float]
    latents: Tensor | None = None
    timesteps: Tensor | None = None


class Guidance(torch.nn.Module):
    """Base of all guidance methods.

    Class attributes the engine reads:

    - ``config_class``: the dataclass configuring this guidance (``Guidance(prior, config, conditioners)``).
    - ``views_per_group``: cameras arrive in groups of this many views the model sees at once
      (1 for SDS; MVDream: 4 views sharing an elevation, 90° apart in azimuth). The engine samples
      ``batch = groups × views_per_group`` cameras, group-major.
    - ``timestep_mode``: ``"random"``: the guidance samples t itself each call; ``"scheduled"``
      (DreamFlow): :meth:`timestep` maps the step to (t, t_next), the engine passes it to ``forward``.
    - ``needs_source``: the method edits an existing asset (InstructPix2Pix): each call gets ``source``, the
      render of a frozen copy of that asset from the same cameras with the same shading
      (``dreamsmith edit``); a run without a source is refused.
    - ``fits_views``: the method fits the asset to a dataset of fixed views it keeps (Instruct-NeRF2NeRF): the
      engine draws ``config.views`` cameras once, renders the frozen source there for ``start_dataset(cameras,
      rgb)``, takes each step's cameras from ``views(step, generator, batch)`` and renders them with the preview
      shading under a headlight (the images it fits were made so); its calls get no ``source``.

    The frozen diffusion prior is held as a plain attribute, not a submodule, so ``state_dict()``
    holds only the guidance's own trainable state (e.g. a camera MLP) and checkpoints stay small.
    """

    config_class: ClassVar[type]
    views_per_group: ClassVar[int] = 1
    timestep_mode: ClassVar[str] = "random"
    needs_source: ClassVar[bool] = False
    fits_views: ClassVar[bool] = False

    def __init__(self, prior: Any, config: Any, conditioners: Sequence[Conditioner] = ()) -> None:
        super().__init__()
        self.prior = prior
        self.config = config
        self.conditioners = list(conditioners)
        self.own_optimizer: GuidanceOptimizer | None = None
        self.own_loras: list[tuple[str, torch.nn.Module]] = []

    def add_own_lora(
        self, name: str, rank: int, alpha: float | None = None, unet: torch.nn.Module | None = None
    ) -> list[torch.nn.Parameter]:
        """A LoRA adapter ``name`` on ``unet`` (default: the shared prior's) that this guidance trains and
        checkpoints (active only in calls given ``LoRAConditioner(name)``); returns its parameters."""
        unet = self.prior.unet if unet is None else unet
        params = add_lora(unet, name, rank, alpha)
        self.own_loras.append((name, unet))
        return params

    @classmethod
    def check_config(cls, config: Any, path: str = "guidance.") -> None:
        """Raise a ConfigError naming the key for anything in ``config`` this method cannot run with,
        before any model loads (called when the run's config resolves)."""

    def timestep(self, step: int) -> ScheduledTimestep | None:
        """The scheduled (t, t_next) of optimization ``step``; None: the guidance draws t itself."""
        return None

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        timestep: ScheduledTimestep | int | None = None,
        source: RenderOutput | None = None,
    ) -> GuidanceOutput:
        """The guidance loss of ``render`` (from ``cameras``) at optimization ``step``.

        generator: the run's seeded generator (all noise and timesteps are drawn from it);
        timestep: the engine's scheduled (t, t_next) (or a fixed integer t), else None; source: the
        edited asset's frozen render from the same ``cameras`` (``needs_source`` methods), else None.
        """
        raise NotImplementedError

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the guidance trains with its own optimizer; [] when it trains none."""
        return [] if self.own_optimizer is None else list(self.own_optimizer.parameters)

    def update(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        output: GuidanceOutput | None = None,
    ) -> dict[str, float]:
        """The guidance's own optimizer step on the detached render, after the asset's step (VSD fits its
        LoRA to the current renders); returns logs. A no-op for guidances that train nothing."""
        if self.own_optimizer is None:
            return {}
        loss = self.training_loss(render, cameras, step, generator, output)
        self.own_optimizer.step(loss)
        return {"loss_guidance_own": float(loss.detach()), "lr_guidance_own": self.own_optimizer.lr}

    def training_loss(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        output: GuidanceOutput | None,
    ) -> Tensor:
        """The loss of the guidance's own parameters (subclasses that set ``own_optimizer``)."""
        raise NotImplementedError(f"{type(self).__name__} has its own optimizer but no training_loss")

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything to continue exactly: own parameters and buffers, own LoRA weights on the prior, and
        the own optimizer's state."""
        return {
            "module": self.state_dict(),
            "loras": [lora_state_dict(unet, name) for name, unet in self.own_loras],
            "optimizer": None if self.own_optimizer is None else self.own_optimizer.state_dict(),
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` (an empty dict: a guidance with no state)."""
        self.load_state_dict(state.get("module", {}))
        saved = state.get("loras", [])
        if len(saved) != len(self.own_loras):
            raise ConfigError(f"the checkpoint holds {len(saved)} LoRA adapters of the guidance, the guidance "
                              f"has {len(self.own_loras)}: it was saved with another guidance configuration")
        # by position: an adapter's name depends on what else shares the model (particle, particle_2...)
        for (name, unet), weights in zip(self.own_loras, saved, strict=True):
            load_lora_state_dict(unet, name, weights)
        if self.own_optimizer is not None and state.get("optimizer") is not None:
            self.own_optimizer.load_state_dict(state["optimizer"])


def detached(render: RenderOutput) -> RenderOutput:
    """The same render cut from the autograd graph (what conditioners and ``update`` see)."""
    return RenderOutput(
        rgb=render.rgb.detach(),
        opacity=render.opacity.detach(),
        depth=render.depth.detach(),
        normal=None if render.normal is None else render.normal.detach(),
        losses={},
    )
