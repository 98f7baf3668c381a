"""What rays that leave the scene see."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamsmith.representations.configs import BackgroundConfig
from dreamsmith.representations.nerf import mlp


class Background(nn.Module):
    """Background colour ``[..., 3]`` as a function of unit ray directions ``[..., 3]``."""

    def __init__(self, config: BackgroundConfig) -> None:
        super().__init__()
        if config.kind not in ("solid", "mlp"):
            raise ValueError(f"background kind {config.kind!r} is not solid or mlp")
        self.config = config
        self.register_buffer("color", torch.tensor(config.color, dtype=torch.float32))
        self.net = mlp(3, 3, config.hidden_dim, 1) if config.kind == "mlp" else None

    def forward(self, directions: Tensor, random_color: Tensor | None = None) -> Tensor:
        """Background for ``directions [..., 3]``; ``random_color [3]`` replaces a learned one."""
        if random_color is not None:
            return random_color.to(directions).expand(*directions.shape[:-1], 3)
        if self.net is None:
            return self.color.expand(*directions.shape[:-1], 3)
        return torch.sigmoid(self.net(directions))
