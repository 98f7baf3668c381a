"""A learnable colour texture looked up by UV coordinates (TEXTure's and Text2Tex's texture atlas)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class UVTexture(nn.Module):
    """An sRGB texture ``[H, W, 3]`` in (0, 1), stored as logits so every texel stays in range.

    The lookup follows ``exporters.bake.sample_texture`` (and glTF once flipped): bilinear, texel
    centres at ``(i + 0.5) / W``, clamped at the edges, row 0 is the top of the image (``v = 1``).
    """

    def __init__(self, size: int, init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        color = torch.tensor(init_color, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        self.logits = nn.Parameter(torch.logit(color).expand(size, size, 3).clone())

    def image(self) -> Tensor:
        """The texture ``[H, W, 3]`` in (0, 1)."""
        return torch.sigmoid(self.logits)

    def forward(self, uvs: Tensor) -> Tensor:
        """Colours ``[N, 3]`` at ``uvs [N, 2]``."""
        grid = torch.stack([2.0 * uvs[:, 0] - 1.0, 1.0 - 2.0 * uvs[:, 1]], dim=-1).to(self.logits)
        image = self.image().permute(2, 0, 1).unsqueeze(0)
        sampled = nn.functional.grid_sample(image, grid.view(1, 1, -1, 2), mode="bilinear",
                                            padding_mode="border", align_corners=False)
        return sampled[0, :, 0].transpose(0, 1)
