"""View-dependent prompting and the text-embedding cache.

DreamFusion (Poole et al. 2022, sec. 3.2) appends "front view", "side view", "back view" or
"overhead view" to the prompt depending on where the camera is. Directions use dreamsmith's camera
convention (DESIGN.md): azimuth 0 puts the camera on +Z, looking at the asset's front.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

VIEW_DIRECTIONS = ("front", "side", "back", "overhead")


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuths wrapped into (−180, 180] degrees."""
    return 180.0 - torch.remainder(180.0 - azimuth_deg, 360.0)


def view_direction(
    azimuth_deg: Tensor | Sequence[float],
    elevation_deg: Tensor | Sequence[float],
    front_threshold: float = 45.0,
    back_threshold: float = 45.0,
    overhead_threshold: float = 60.0,
) -> list[str]:
    """The view direction of each camera, in ``("front", "side", "back", "overhead")``.

    overhead: elevation > ``overhead_threshold``; otherwise front: |azimuth| < ``front_threshold``;
    back: |azimuth| > 180 − ``back_threshold``; side: the rest (threestudio's thresholds and
    precedence, in dreamsmith's azimuth convention).
    """
    azimuth = wrap_azimuth(torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1).cpu())
    elevation = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1).cpu()
    directions = []
    for az, el in zip(azimuth.tolist(), elevation.tolist(), strict=True):
        if el > overhead_threshold:
            directions.append("overhead")
        elif abs(az) < front_threshold:
            directions.append("front")
        elif abs(az) > 180.0 - back_threshold:
            directions.append("back")
        else:
            directions.append("side")
    return directions


def view_prompt(prompt: str, direction: str | None) -> str:
    """``"<prompt>, <direction> view"``; the prompt itself when ``direction`` is None."""
    if direction is None:
        return prompt
    if direction not in VIEW_DIRECTIONS:
        raise ValueError(f"unknown view direction {direction!r}; choose one of {', '.join(VIEW_DIRECTIONS)}")
    return f"{prompt}, {direction} view"


class PromptEncoder(Protocol):
    """What the cache needs from a prior."""

    def encode_prompts(self, prompts: list[str]) -> Tensor: ...


class PromptCache:
    """Text embeddings computed once per text, i.e. once per (prompt, direction) and per negative prompt.

    Texts not seen before are encoded together in one call of ``prior.encode_prompts``; later
    requests are served from the cache. Embeddings are ``[L, D]`` per text, returned stacked
    ``[B, L, D]``.
    """

    def __init__(self, prior: PromptEncoder) -> None:
        self.prior = prior
        self._embeddings: dict[str, Tensor] = {}

    def embed(self, texts: Sequence[str]) -> Tensor:
        """Embeddings ``[B, L, D]`` of ``texts``, encoding only those not cached yet."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._embeddings))
        if missing:
            for text, embedding in zip(missing, self.prior.encode_prompts(missing), strict=True):
                self._embeddings[text] = embedding
        return torch.stack([self._embeddings[text] for text in texts])

    def text_embeddings(self, prompt: str, directions: Sequence[str | None]) -> Tensor:
        """Conditional embeddings ``[B, L, D]``: ``prompt`` with each camera's view suffix (None: none)."""
        return self.embed([view_prompt(prompt, direction) for direction in directions])

    def negative_embeddings(self, negative_prompt: str, batch: int) -> Tensor:
        """Unconditional (``""``) or negative-prompt embeddings ``[batch, L, D]``."""
        return self.embed([negative_prompt]).expand(batch, -1, -1)
