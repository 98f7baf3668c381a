"""Regional prompts bound to 3D regions of the asset (RPG's regional cross-attention, in 3D).

Each region (:mod:`dreamsmith.regions`: half-spaces and boxes in world coordinates) becomes a mask in
every view: the pixels whose surface point (the render's expected ray termination) lies inside it. In
every cross-attention layer of the UNet, each sub-prompt's attention output is composited by its mask,
resized to the layer's resolution, and mixed with the base prompt's output by ``base_ratio``
(:func:`dreamsmith.guidance.math.regional_composite`). The base prompt is the guidance's own prompt;
only the conditional branch (``"cond"``) of a CFG call gets the regions. Sub-prompts are encoded once,
without view-dependent suffixes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.guidance.attention import AttentionHook, cross_attend
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner, tile_to_batch
from dreamsmith.guidance.math import regional_composite
from dreamsmith.regions import Region
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput, surface_points

REGIONAL_BRANCH = "cond"


def region_masks(render: RenderOutput, cameras: Cameras, regions: Sequence[Region]) -> Tensor:
    """``[B, R, H, W]`` 1 where a pixel's surface (opacity > 0.5) lies inside region r, else 0."""
    points = surface_points(render, cameras.to(render.depth.device))
    foreground = render.opacity[..., 0] > 0.5
    return torch.stack([region.contains(points) & foreground for region in regions], dim=1).to(render.depth)


def token_grid(length: int, height: int, width: int) -> tuple[int, int]:
    """``(rows, cols)`` of a layer's ``length = rows * cols`` tokens laid out as an image of aspect height:width."""
    rows = round(math.sqrt(length * height / width))
    cols = length // rows
    if rows * cols != length:
        raise ValueError(f"cannot lay {length} attention tokens out as an image of aspect {height}:{width}")
    return rows, cols


def masks_at(masks: Tensor, length: int) -> Tensor:
    """Masks ``[B, R, H, W]`` averaged onto a layer's ``length = h * w`` tokens (same aspect): ``[B, h*w, R]``."""
    resized = F.interpolate(masks, size=token_grid(length, *masks.shape[-2:]), mode="area")
    return resized.flatten(2).transpose(1, 2)


class RegionalCrossAttention(AttentionHook):
    """Composites each sub-prompt's cross-attention output by its mask (see the module doc).

    region_embeds: ``[R, L, D]`` the sub-prompts' text embeddings; masks: ``[B, R, H, W]`` for the call's
    ``B`` samples (zero for samples that keep the base prompt only).
    """

    _QUERY = "regional_query"

    def __init__(self, region_embeds: Tensor, masks: Tensor, base_ratio: float) -> None:
        self.region_embeds = region_embeds
        self.masks = masks
        self.base_ratio = base_ratio

    def applies_to(self, name: str, attn: Any) -> bool:
        return bool(attn.is_cross_attention)

    def key_value(
        self, attn: Any, query: Tensor, key: Tensor, value: Tensor, context: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        context[self._QUERY] = query  # the sub-prompts attend with the same queries in output()
        return key, value

    def output(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        query = context[self._QUERY]
        batch, length, _ = hidden_states.shape
        regional = torch.stack([
            cross_attend(attn, query, embeds.expand(batch, -1, -1).to(hidden_states)) for embeds in self.region_embeds
        ])
        masks = masks_at(tile_to_batch(self.masks, batch).to(hidden_states), length)
        return regional_composite(hidden_states, regional, masks, self.base_ratio)


class RegionalPrompts(Conditioner):
    """Sub-prompts painted inside 3D regions of the asset, mixed with the base prompt by ``base_ratio``
    (1: the base prompt only; 0: the sub-prompts alone inside their regions)."""

    def __init__(self, regions: Sequence[Region], region_embeds: Tensor, base_ratio: float = 0.3) -> None:
        if len(regions) != region_embeds.shape[0]:
            raise ValueError(f"{len(regions)} regions need {len(regions)} embeddings, got {region_embeds.shape[0]}")
        self.regions = list(regions)
        self.region_embeds = region_embeds
        self.base_ratio = base_ratio

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        if context.render is None or context.cameras is None:
            raise ValueError("RegionalPrompts needs the render and its cameras in its ConditionContext")
        masks = region_masks(context.render, context.cameras, self.regions)
        if self.base_ratio >= 1.0 or not masks.any():
            return ()  # the base prompt alone: the model's own attention, bit for bit
        if context.branch_labels:
            masks = tile_to_batch(masks, len(context.branch_labels))
            regional = context.branch_mask(REGIONAL_BRANCH, masks.device).to(masks)
            masks = masks * regional.view(-1, 1, 1, 1)
        return [RegionalCrossAttention(self.region_embeds, masks, self.base_ratio)]
