"""The embedded demonstration texture source: each garment image laid onto its region like a decal.

A garment's image is projected through the asset along the view axis (+Z, the front), stretched over the
region's extent in x and y (the bounding box of the mesh's vertices inside the region), so its colours
and pattern land on the front and, mirrored through, on the back; its alpha says where the garment is.
Every view's answer is the render with the garments composited over it in order, and the confidence is
the garments' coverage: outside them the asset keeps its colour. No model: the whole try-on flow
(render, source, projection, fill, export) runs offline and can be scored (``benchmarks/tryon_score.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.regions import Region
from dreamsmith.tryon.garments import Garment
from dreamsmith.tryon.source import SourceResult, ViewBatch


@dataclass
class DecalLayer:
    """One garment on one region: its image and the world rectangle ``(x0, y0, x1, y1)`` it spans."""

    garment: Garment
    region: Region
    frame: tuple[float, float, float, float]

    def lookup(self, points: Tensor) -> Tensor:
        """The garment's RGBA ``[..., 4]`` at ``points [..., 3]`` (projected along Z)."""
        x0, y0, x1, y1 = self.frame
        u = (points[..., 0] - x0) / max(x1 - x0, 1e-9)
        v = (y1 - points[..., 1]) / max(y1 - y0, 1e-9)
        grid = torch.stack([2 * u - 1, 2 * v - 1], dim=-1).reshape(1, 1, -1, 2).to(torch.float32)
        image = torch.from_numpy(self.garment.rgba).permute(2, 0, 1)[None].to(grid.device)
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return sampled[0, :, 0].transpose(0, 1).reshape(*points.shape[:-1], 4).to(points)


def decal_layers(garments: list[Garment], regions: list[Region], vertices: np.ndarray) -> list[DecalLayer]:
    """Each garment spanning the x-y extent of the mesh vertices in its region."""
    layers = []
    for garment, region in zip(garments, regions, strict=True):
        inside = vertices[region.contains(vertices)]
        inside = inside if len(inside) else vertices
        low, high = inside.min(0), inside.max(0)
        layers.append(DecalLayer(garment, region, (float(low[0]), float(low[1]), float(high[0]), float(high[1]))))
    return layers


class DecalSource:
    """Garments as decals over their regions (see the module doc); ``views.region`` holds one mask per layer."""

    name = "decal"

    def __init__(self, layers: list[DecalLayer]) -> None:
        self.layers = layers

    def edit(self, views: ViewBatch) -> SourceResult:
        points = views.points
        images = views.rgb.clone()
        keep = torch.ones_like(images[..., 0])
        for index, layer in enumerate(self.layers):
            rgba = layer.lookup(points)
            alpha = rgba[..., 3] * views.region[:, index] * views.opacity[..., 0]
            images = images + alpha.unsqueeze(-1) * (rgba[..., :3] - images)
            keep = keep * (1 - alpha)
        return SourceResult(images, 1 - keep)
