"""One stage at run time: its representation (with its renderer), guidance and optimizer, and its step."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from dreamsmith.configs import build
from dreamsmith.engine.camera_sampling import eval_cameras, sample_cameras
from dreamsmith.engine.config import StageConfig, guidance_options
from dreamsmith.engine.losses import needs_normals
from dreamsmith.engine.optim import make_optimizer, update_learning_rates
from dreamsmith.engine.shading_sampling import choose_light, choose_shading
from dreamsmith.engine.stages import REPRESENTATIONS, Representation
from dreamsmith.guidance import GUIDANCES, Guidance, detached
from dreamsmith.guidance.conditioner_registry import build_conditioners
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput, normal_image


def build_guidance(config: StageConfig, prior: Any, prompt: str, allow_pickle: bool = False) -> Guidance:
    """The stage's guidance module for ``prompt``, with the conditioners its config names."""
    guidance_class = GUIDANCES[config.guidance.get("name", "sds")]
    options = guidance_options(config, guidance_class)
    engine_set = {"prompt": prompt}
    if "allow_pickle" in {f.name for f in fields(guidance_class.config_class)}:
        engine_set["allow_pickle"] = allow_pickle
    guidance_config = build(guidance_class.config_class, {**options, **engine_set})
    conditioners = build_conditioners(getattr(guidance_config, "conditioners", []), prior, allow_pickle, prompt)
    return guidance_class(prior, guidance_config, conditioners)


@dataclass
class StepResult:
    """Numbers of one optimization step."""

    loss: float
    logs: dict[str, float] = field(default_factory=dict)


class Stage:
    """Everything one stage optimizes, and how one step of it runs.

    source: a frozen representation of the asset an edit starts from; a guidance that ``needs_source``
    gets its render from each step's cameras, with the step's shading, light and background.
    """

    def __init__(
        self, config: StageConfig, prior: Any, prompt: str, device: torch.device, allow_pickle: bool = False,
        source: Representation | None = None,
    ) -> None:
        if config.representation not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {config.representation!r}; expected {list(REPRESENTATIONS)}")
        self.config = config
        self.device = device
        self.representation: Representation = REPRESENTATIONS[config.representation](config, device)
        self.guidance = build_guidance(config, prior, prompt, allow_pickle).to(device)
        self.source = source if self.guidance.needs_source else None
        # the guidance's own parameters (a LoRA) train with its own optimizer in update(), never here
        self.optimizer = make_optimizer(self.representation.parameter_groups(), config.optim)

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.representation.state_dict(),
            "guidance": self.guidance.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.representation.load_state_dict(state)
        self.guidance.load_checkpoint_state(state["guidance"])
        self.optimizer.load_state_dict(state["optimizer"])

    def step(self, step: int, generator: torch.Generator) -> StepResult:
        """One optimization step: sample cameras, render, judge, regularize, update."""
        config = self.config
        self.representation.set_step(step)
        update_learning_rates(self.optimizer, config.optim, step)
        if self.guidance.fits_views:
            cameras, shading, light, background_color = self._dataset_views(step, generator)
        else:
            cameras = sample_cameras(config.camera, generator, self.guidance.views_per_group).to(self.device)
            shading = choose_shading(config.shading, step, generator)
            light = choose_light(config.shading, cameras, generator)
            background_color = self._random_background(generator)
        render = self.representation.render(cameras, shading, light, background_color, generator,
                                            need_normals=needs_normals(config.loss, step))
        judged = replace(render, rgb=normal_image(render)) if config.shading.guide_normals else render
        source = None
        if self.source is not None and not self.guidance.fits_views:
            with torch.no_grad():  # no generator: the source's render draws nothing from the run's stream
                seen = self.source.render(cameras, shading, light, background_color, None,
                                          need_normals=config.shading.guide_normals)
            source = replace(seen, rgb=normal_image(seen)) if config.shading.guide_normals else seen
        out = self.guidance(judged, cameras, step, generator, self.guidance.timestep(step), source=source)
        regularizers = self.representation.regularizers(render, step)
        total = out.loss + sum(regularizers.values(), torch.zeros((), device=self.device))
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        logs = dict(out.logs)
        logs |= {f"loss_{name}": float(value.detach()) for name, value in regularizers.items()}
        logs |= self.guidance.update(detached(judged), cameras, step, generator, out)
        return StepResult(loss=float(total.detach()), logs=logs)

    def _dataset_views(self, step: int, generator: torch.Generator) -> tuple[Cameras, str, None, None]:
        """A ``fits_views`` guidance's cameras of this step (its dataset started from the frozen source at the first
        step, unless a checkpoint restored it), with the fixed shading its images were rendered with."""
        config, guidance = self.config, self.guidance
        shading = config.shading.preview_shading
        if guidance.dataset is None:
            if self.source is None:
                raise ValueError(f"guidance {config.guidance.get('name')} fits views of a source asset; it has none")
            views = sample_cameras(replace(config.camera, batch_size=guidance.config.views), generator)
            with torch.no_grad():
                images = [self.source.render(views[i:i + config.camera.batch_size].to(self.device), shading, None,
                                             None, None, need_normals=False).rgb
                          for i in range(0, len(views), config.camera.batch_size)]
            guidance.start_dataset(views.to(self.device), torch.cat(images))
        return guidance.views(step, generator, config.camera.batch_size).to(self.device), shading, None, None

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
        return self.representation.render_previews(cameras, shading or self.config.shading.preview_shading)
