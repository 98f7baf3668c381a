"""One stage at run time: its representation, renderer, guidance and optimizer, and its step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dreamsmith.engine.camera_sampling import eval_cameras, sample_cameras
from dreamsmith.engine.config import StageConfig, build
from dreamsmith.engine.losses import needs_normals, regularizer_losses
from dreamsmith.engine.optim import make_optimizer, update_learning_rates
from dreamsmith.engine.shading_choice import choose_light, choose_shading
from dreamsmith.guidance import GUIDANCES, Guidance, detached
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.renderers.volume import VolumeRenderer
from dreamsmith.representations.background import Background
from dreamsmith.representations.nerf import NeRFField


def build_guidance(config: StageConfig, prior: Any, prompt: str) -> Guidance:
    """The stage's guidance module, configured for ``prompt``."""
    guidance_class = GUIDANCES[config.guidance.get("name", "sds")]
    options = {k: v for k, v in config.guidance.items() if k != "name"}
    guidance_config = build(guidance_class.config_class, {**options, "prompt": prompt})
    return guidance_class(prior, guidance_config)


@dataclass
class StepResult:
    """Numbers of one optimization step."""

    loss: float
    logs: dict[str, float] = field(default_factory=dict)


class Stage:
    """Everything one stage optimizes, and how one step of it runs."""

    def __init__(self, config: StageConfig, prior: Any, prompt: str, device: torch.device) -> None:
        if config.representation != "nerf":
            raise ValueError(f"unknown representation {config.representation!r}; this version supports nerf")
        self.config = config
        self.device = device
        self.field = NeRFField(config.nerf, device=device).to(device)
        self.background = Background(config.background).to(device)
        self.renderer = VolumeRenderer(config.renderer, bound=config.nerf.bound, device=device).to(device)
        self.guidance = build_guidance(config, prior, prompt).to(device)
        groups = self.field.parameter_groups()
        if config.background.kind == "mlp":
            groups["background"] = list(self.background.parameters())
        self.optimizer = make_optimizer(groups, config.optim)
        extra = self.guidance.trainable_parameters()
        for group in extra:
            self.optimizer.add_param_group({"name": "guidance", **group})

    def state_dict(self) -> dict[str, Any]:
        return {
            "field": self.field.state_dict(),
            "background": self.background.state_dict(),
            "renderer": self.renderer.state_dict(),
            "guidance": self.guidance.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.renderer.load_state_dict(state["renderer"])
        self.guidance.load_state_dict(state["guidance"])
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self, step: int, generator: torch.Generator) -> StepResult:
        """One optimization step: sample cameras, render, judge, regularize, update."""
        config = self.config
        self.field.set_step(step)
        self.renderer.update_occupancy(self.field, step)
        update_learning_rates(self.optimizer, config.optim, step)
        cameras = sample_cameras(config.camera, generator, self.guidance.views_per_group).to(self.device)
        shading = choose_shading(config.shading, step, generator)
        light = choose_light(config.shading, cameras, generator)
        background_color = self._random_background(generator)
        render = self.renderer(
            self.field,
            self.background,
            cameras,
            shading=shading,
            light_dir=light,
            ambient=config.shading.ambient,
            diffuse=config.shading.diffuse,
            background_color=background_color,
            generator=generator,
            need_normals=needs_normals(config.loss, step),
        )
        out = self.guidance(render, cameras, step, generator)
        regularizers = regularizer_losses(render, config.loss, step)
        total = out.loss + sum(regularizers.values(), torch.zeros((), device=self.device))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logs = dict(out.logs)
        logs |= {f"loss_{name}": float(value.detach()) for name, value in regularizers.items()}
        logs |= self.guidance.update(detached(render), cameras, step, generator)
        return StepResult(loss=float(total.detach()), logs=logs)

    def _random_background(self, generator: torch.Generator) -> Tensor | None:
        """threestudio's random solid background for a learned background, some steps."""
        config = self.config.background
        if config.kind != "mlp" or config.random_color_probability <= 0:
            return None
        draw = torch.rand(4, generator=generator, device=generator.device).to(self.device)
        return draw[1:] if float(draw[0]) < config.random_color_probability else None

    @torch.no_grad()
    def render_previews(self, n_views: int | None = None, resolution: int | None = None,
                        shading: str | None = None) -> RenderOutput:
        """Deterministic renders from the preview cameras."""
        cameras = eval_cameras(self.config.camera, n_views, resolution).to(self.device)
        return self.renderer.render_chunked(
            self.field,
            self.background,
            cameras,
            shading=shading or self.config.shading.preview_shading,
            light_dir=None,
            ambient=self.config.shading.ambient,
            diffuse=self.config.shading.diffuse,
        )
