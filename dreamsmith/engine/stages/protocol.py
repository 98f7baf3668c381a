"""What a stage optimizes, together with how it is seen: one protocol for every representation kind."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dreamsmith.engine.config import ExportConfig, StageConfig
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.representations.mesh import Mesh


class Representation(Protocol):
    """A stage's representation and its renderer (``nerf.py``, ``dmtet.py`` beside this file)."""

    config: StageConfig
    renderer: nn.Module

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by learning-rate group (``lr_<name>`` of the stage's optimizer config)."""

    def set_step(self, step: int) -> None:
        """Anything that changes with the step (progressive levels, occupancy refresh)."""

    def render(self, cameras: Cameras, shading: str, light_dir: Tensor | None, background_color: Tensor | None,
               generator: torch.Generator | None, need_normals: bool) -> RenderOutput:
        """A differentiable training render of ``cameras``."""

    def render_previews(self, cameras: Cameras, shading: str) -> RenderOutput:
        """Deterministic renders of ``cameras`` (no gradients)."""

    def regularizers(self, render: RenderOutput, step: int) -> dict[str, Tensor]:
        """Weighted regularizer losses of the last training render."""

    def albedo(self, points: Tensor) -> Tensor:
        """Base colour ``[N, 3]`` in [0, 1] at surface points ``[N, 3]`` (what export bakes)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def init_from(self, previous: Representation, export: ExportConfig) -> None:
        """Start from the previous stage's representation (raises when it cannot)."""

    def export_mesh(self, export: ExportConfig) -> Mesh:
        """The surface to export, with vertex colours."""
