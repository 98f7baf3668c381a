"""What rays that leave the scene see."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dreamsmith.representations.nerf import mlp


@dataclass
class BackgroundConfig:
    kind: str = "mlp"
    """solid (a fixed colour) or mlp (a small learned function of the view direction)."""
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour of a solid background (sRGB in [0, 1])."""
    random_color_probability: float = 0.5
    """While training an mlp background, chance per step of a random solid colour instead
    (threestudio's trick that stops the background from explaining the object)."""
    hidden_dim: int = 32
    """Width of the mlp background."""


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
