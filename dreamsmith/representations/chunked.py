"""Batched evaluation of a point function a bounded number of points at a time."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def evaluate_in_chunks(function: Callable[[Tensor], Tensor], points: Tensor, chunk_points: int) -> Tensor:
    """``function(points)`` for ``points [N, ...]``, at most ``chunk_points`` rows per call, concatenated."""
    if points.shape[0] <= chunk_points:
        return function(points)
    return torch.cat([function(points[i : i + chunk_points]) for i in range(0, points.shape[0], chunk_points)])
