"""Instruct-NeRF2NeRF (Haque et al. 2023, "Instruct-NeRF2NeRF: Editing 3D Scenes with Instructions"): the iterative
dataset update, on InstructPix2Pix's pieces.

A fixed set of views of the source asset (cameras drawn once, the frozen source rendered at them) is the dataset
(:mod:`dreamsmith.guidance.view_dataset`); the asset is fitted to it with a photometric loss. Every
``edit_every`` steps the next view in turn is replaced by an InstructPix2Pix edit of the asset's *current* render
at that camera: its z noised to a random t in [min, max]·T, then denoised with DDIM
(:func:`~dreamsmith.guidance.math.ddim_step` over :func:`~dreamsmith.guidance.timesteps.ddim_timesteps`, ᾱ from
the prior's own scheduler) through the three-branch guidance of :class:`~dreamsmith.guidance.ip2p.IP2PGuidance`,
the view's source render the image condition. Edits of a view drift towards the instruction while the fit makes
the asset's views agree with each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import Tensor

from dreamsmith.configs import Range
from dreamsmith.guidance.base import GuidanceOutput
from dreamsmith.guidance.ip2p import IP2PConfig, IP2PGuidance
from dreamsmith.guidance.math import add_noise, alpha_sigma, ddim_step, photometric_loss, sample_timesteps
from dreamsmith.guidance.timesteps import ScheduledTimestep, ddim_timesteps
from dreamsmith.guidance.view_dataset import ViewDataset
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.schedules import schedule_value


@dataclass
class IN2NConfig(IP2PConfig):
    """Instruct-NeRF2NeRF: the asset fitted to views of the source that InstructPix2Pix edits one at a time; the
    run's PROMPT is the instruction. min/max_step_percent: the range of each edit's starting noise level (the
    paper's 0.02 and 0.98); weighting and grad_clip do not apply (there is no distillation gradient)."""

    views: Annotated[int, Range(1, 1024)] = 24
    """Views of the source in the dataset (cameras drawn once from the stage's camera ranges)."""
    edit_every: Annotated[int, Range(1, None)] = 10
    """Steps between two edits (the paper's 10): steps 0, N, 2N... each replace the next view in turn."""
    ddim_steps: Annotated[int, Range(1, 1000)] = 20
    """DDIM steps of one edit (the paper's 20)."""
    rgb_loss: Literal["l1", "l2"] = "l1"
    """The photometric loss of the fit: l1 (the paper's, without its LPIPS term) or l2."""
    rgb_weight: Annotated[float, Range(0, None)] = 1.0
    """Weight of the photometric loss (against the stage's regularizers)."""


class IN2NGuidance(IP2PGuidance):
    """Instruct-NeRF2NeRF's dataset update and fit, on an InstructPix2Pix model.

    The engine starts the dataset (:meth:`start_dataset`) with renders of the frozen source, takes each step's
    cameras from :meth:`views` and renders them with fixed shading (so dataset images and renders agree); a
    call before the dataset is started makes the call's views and its ``source`` renders the dataset.
    """

    config_class = IN2NConfig
    config: IN2NConfig
    fits_views: ClassVar[bool] = True

    def __init__(self, prior: Any, config: IN2NConfig, conditioners: Any = ()) -> None:
        super().__init__(prior, config, conditioners)
        self.dataset: ViewDataset | None = None

    def start_dataset(self, cameras: Cameras, originals: Tensor) -> None:
        """The source's renders ``originals [K, H, W, 3]`` from ``cameras`` become the dataset."""
        self.dataset = ViewDataset(cameras, originals)

    def edits_at(self, step: int) -> bool:
        """Whether ``step`` edits a view."""
        return step % self.config.edit_every == 0

    def views(self, step: int, generator: torch.Generator, batch: int) -> Cameras:
        """The step's ``min(batch, K)`` distinct dataset views, drawn at random; at an edit step the view to
        edit comes first."""
        dataset = self._started()
        order = torch.randperm(len(dataset), generator=generator, device=generator.device).cpu()
        if self.edits_at(step):
            view = dataset.next_view
            order = torch.cat([torch.tensor([view]), order[order != view]])
        return dataset.cameras[order[: min(batch, len(dataset))].to(dataset.cameras.device)]

    @torch.no_grad()
    def edit(self, render: RenderOutput, original: Tensor, cameras: Cameras, step: int,
             generator: torch.Generator) -> Tensor:
        """InstructPix2Pix's edit ``[B, H, W, 3]`` of ``render`` with the source's images ``original [B, H, W, 3]``
        as image condition: z noised to t ~ U[min, max]·T (one t for the batch), then DDIM to the clean image."""
        prior, config = self.prior, self.config
        z = self.encode(render, generator)
        t_start = int(sample_timesteps(1, schedule_value(config.min_step_percent, step),
                                       schedule_value(config.max_step_percent, step), prior.num_train_timesteps,
                                       generator)[0])
        times = ddim_timesteps(t_start, config.ddim_steps)
        noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
        alphas_cumprod = prior.alphas_cumprod.to(z.device)
        first = torch.full((z.shape[0],), times[0], dtype=torch.long, device=z.device)
        z_t = add_noise(z, noise, *alpha_sigma(alphas_cumprod, first))
        branches = self.branches(render, cameras, step, replace(render, rgb=original.to(render.rgb)))
        scheduler = prior.scheduler.config
        clip = float(scheduler.get("clip_sample_range", 1.0)) if scheduler.get("clip_sample", False) else None
        for index, t in enumerate(times):
            timesteps = torch.full_like(first, t)
            guided = self.combine(branches, self.predict(z_t, timesteps, branches, render, cameras, step), step)
            alpha_bar_prev = alphas_cumprod[times[index + 1]] if index + 1 < len(times) else alphas_cumprod.new_ones(())
            z_t = ddim_step(z_t, guided.float(), alphas_cumprod[timesteps], alpha_bar_prev.expand(len(timesteps)),
                            clip)
        image = prior.decode_latents(z_t)
        height, width = render.rgb.shape[1:3]
        if image.shape[1:3] != (height, width):
            image = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                                    antialias=True, align_corners=False).permute(0, 2, 3, 1)
        return image.to(render.rgb.device)

    def forward(
        self,
        render: RenderOutput,
        cameras: Cameras,
        step: int,
        generator: torch.Generator,
        timestep: ScheduledTimestep | int | None = None,
        source: RenderOutput | None = None,
    ) -> GuidanceOutput:
        """The photometric loss of ``render`` (dataset views, see :meth:`views`) against the dataset, after the
        step's edit (if any) replaced the next view's image."""
        if self.dataset is None:
            if source is None:
                raise ValueError("in2n guidance needs its dataset (start_dataset) or the source's render of the "
                                 "call's views (source=...)")
            self.start_dataset(cameras, source.rgb)
        dataset = self._started()
        indices = dataset.indices_of(cameras)
        logs: dict[str, float] = {}
        if self.edits_at(step):
            view = dataset.next_view
            found = (indices == view).nonzero()
            if not len(found):
                raise ValueError(f"step {step} edits view {view} of the dataset, which is not among the step's "
                                 "cameras (take them from views())")
            at = int(found[0, 0])
            one = RenderOutput(rgb=render.rgb[at:at + 1].detach(), opacity=render.opacity[at:at + 1].detach(),
                               depth=render.depth[at:at + 1].detach())
            edited = self.edit(one, dataset.originals[view:view + 1], cameras[at:at + 1], step, generator)
            if torch.isfinite(edited).all():
                dataset.replace(view, edited[0], step)
            else:  # a model that answers NaN leaves the view as it was
                dataset.skip()
            logs["edit_skipped"] = float(not torch.isfinite(edited).all())
        target = dataset.images[indices.to(dataset.images.device)].to(render.rgb)
        loss = self.config.rgb_weight * photometric_loss(render.rgb, target, self.config.rgb_loss)
        logs |= {
            "loss": float(loss.detach()),
            "edits": float(dataset.edits),
            "edited_views": float((dataset.edited_at >= 0).sum()),
            "guidance_scale": float(schedule_value(self.config.guidance_scale, step)),
            "image_guidance_scale": float(schedule_value(self.config.image_guidance_scale, step)),
        }
        return GuidanceOutput(loss=loss, logs=logs)

    def checkpoint_state(self) -> dict[str, Any]:
        """The base's state and the dataset (None before it starts)."""
        return {**super().checkpoint_state(), "dataset": None if self.dataset is None else self.dataset.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        saved = state.get("dataset")
        self.dataset = None if saved is None else ViewDataset.from_state_dict(saved, self.prior.device)

    def _started(self) -> ViewDataset:
        if self.dataset is None:
            raise ValueError("the Instruct-NeRF2NeRF dataset has not been started (start_dataset)")
        return self.dataset
