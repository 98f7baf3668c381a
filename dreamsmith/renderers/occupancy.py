"""An occupancy grid in PyTorch for the dense sampler (Instant-NGP, Mueller et al. 2022, Sec. 4 and
App. E.2): per cell a running maximum of the field's density, decayed and refreshed every few steps;
samples in cells whose density cannot give a visible alpha are skipped (density 0, never evaluated).

A skipped sample's alpha is below ``skip_alpha`` at the widest sample spacing, so its weight is below
``skip_alpha`` too: with ``skip_alpha`` at most the renderer's ``prune_threshold`` it is a sample that
got no gradient anyway. Until its first update the grid marks every cell occupied.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dreamsmith.representations.chunked import evaluate_in_chunks

DECAY = 0.95
"""Instant-NGP's decay of each cell's density at every update."""
FIRST_UPDATE_SAMPLES = 4
"""Density samples per cell at the first update (the cell centre and jittered points); one afterwards."""


class OccupancyGrid(nn.Module):
    """Cells of ``[-bound, bound]^3`` that may hold density above ``threshold`` (per metre)."""

    def __init__(self, bound: float, resolution: int, threshold: float) -> None:
        super().__init__()
        self.bound = bound
        self.resolution = resolution
        self.threshold = threshold
        self.register_buffer("cell_density", torch.full((resolution,) * 3, float("inf")))
        self.register_buffer("occupied", torch.ones((resolution,) * 3, dtype=torch.bool))

    @torch.no_grad()
    def update(self, density: Callable[[Tensor], Tensor], step: int, chunk_points: int = 1 << 18) -> None:
        """Refresh every cell's density from ``density`` at jittered points in it (seeded by ``step``,
        so the run's own random stream is untouched and a resumed run updates identically)."""
        device = self.cell_density.device
        generator = torch.Generator(device=device).manual_seed(step)
        first = bool(torch.isinf(self.cell_density).any())
        cells = self._cell_corners(device)
        size = 2.0 * self.bound / self.resolution
        samples = []
        for draw in range(FIRST_UPDATE_SAMPLES if first else 1):
            if first and draw == 0:
                jitter = torch.full_like(cells, 0.5)
            else:
                jitter = torch.rand(cells.shape, generator=generator, device=device)
            points = cells + jitter * size
            samples.append(evaluate_in_chunks(density, points, chunk_points))
        sampled = torch.stack(samples).amax(0).view_as(self.cell_density).float()
        decayed = sampled if first else torch.maximum(self.cell_density * DECAY, sampled)
        self.cell_density.copy_(decayed)
        dense = (decayed > self.threshold).float()[None, None]
        # one cell of margin: a cell's maximum is estimated from a few points only
        self.occupied.copy_(nn.functional.max_pool3d(dense, 3, stride=1, padding=1)[0, 0] > 0)

    def _cell_corners(self, device: torch.device) -> Tensor:
        """Lower corners ``[G^3, 3]`` of the cells, in the order of ``cell_density.view(-1)``."""
        axis = torch.linspace(-self.bound, self.bound, self.resolution + 1, device=device)[:-1]
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)

    def is_occupied(self, points: Tensor) -> Tensor:
        """Whether each point ``[N, 3]`` lies in an occupied cell (points a rounding error outside the
        cube count as in the nearest cell)."""
        cell = ((points + self.bound) / (2.0 * self.bound) * self.resolution).floor().long()
        cell = cell.clamp(0, self.resolution - 1)
        flat = (cell[:, 0] * self.resolution + cell[:, 1]) * self.resolution + cell[:, 2]
        return self.occupied.view(-1)[flat]

    def occupied_fraction(self) -> float:
        """Fraction of cells marked occupied."""
        return float(self.occupied.float().mean())
