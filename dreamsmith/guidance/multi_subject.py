"""Multi-subject layout (MS-Diffusion, Wang et al. 2024, Sec. 3.3), in 3D: several subject images, each confined
to a 3D box around a part of the asset.

Each subject's box is projected into every view as the 2D rectangle around its eight corners (the published
layouts are rectangles; the box's footprint exists before the part does, unlike a surface mask). In every
cross-attention layer the text attention is kept, and IP-Adapter's image attention (:mod:`ip_adapter`) is
added with a layout mask: a query attends to the image tokens of the subjects whose rectangle holds it (its
patch, floor/ceil-rounded at the layer's resolution, as published), and a query outside every rectangle gets no
image attention at all, its output the text attention's exactly::

    Z_new = Attention(Q, K_text, V_text) + λ · M_any ⊙ Attention(Q, K_img, V_img; mask M)

Each subject's tokens come from the grounding resampler (:mod:`grounding_resampler`) of its image, its phrase and
its rectangle in that view. The published checkpoint's ``dummy_image_tokens`` are attended only by queries outside
every box, whose image attention the processor then sets to zero: they never reach the output, so they are not
used here. The unconditional branch gets no image attention (the published zero tokens and empty boxes).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.guidance.attention import AttentionHook, merge_heads
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner, tile_to_batch
from dreamsmith.guidance.ip_adapter import UNCONDITIONAL_BRANCHES, DecoupledCrossAttention, IPAdapter, IPAdapterLayer
from dreamsmith.guidance.regional import token_grid
from dreamsmith.renderers.cameras import Cameras

_CORNERS = torch.tensor(list(itertools.product((False, True), repeat=3)))


def projected_boxes(lower: Tensor, upper: Tensor, cameras: Cameras) -> Tensor:
    """``[B, S, 4]`` normalized ``(x0, y0, x1, y1)`` image rectangles (x to the right, y down from the top row) around
    the projections of the boxes ``lower, upper [S, 3]`` in each camera, clipped to the image; the whole image for
    a box reaching behind the camera."""
    corners = torch.where(_CORNERS.to(lower.device)[None], upper[:, None], lower[:, None])  # [S, 8, 3]
    c2w = cameras.c2w.to(corners)
    camera = (corners[None] - c2w[:, None, None, :3, 3]) @ c2w[:, None, :3, :3]  # world -> camera: Rᵀ(p − t)
    depth = -camera[..., 2]
    focal = cameras.focal_length.to(corners).view(-1, 1, 1)
    x = 0.5 + focal * camera[..., 0] / depth.clamp_min(1e-6) / cameras.width
    y = 0.5 - focal * camera[..., 1] / depth.clamp_min(1e-6) / cameras.height
    boxes = torch.stack([x.amin(-1), y.amin(-1), x.amax(-1), y.amax(-1)], dim=-1).clamp(0.0, 1.0)
    behind = (depth <= 1e-6).any(-1, keepdim=True)
    return torch.where(behind, torch.tensor([0.0, 0.0, 1.0, 1.0]).to(boxes), boxes)


def box_token_masks(boxes: Tensor, length: int, height: int, width: int) -> Tensor:
    """``[B, length, S]`` bool: the layer's tokens (an image of aspect height:width, row-major) inside each
    rectangle of ``boxes [B, S, 4]``, whose patch range is floor(x0·cols) .. ceil(x1·cols) (as published)."""
    rows, cols = token_grid(length, height, width)
    start = torch.floor(boxes[..., :2] * boxes.new_tensor([cols, rows]))
    end = torch.ceil(boxes[..., 2:] * boxes.new_tensor([cols, rows]))
    col = torch.arange(cols, device=boxes.device, dtype=boxes.dtype)
    row = torch.arange(rows, device=boxes.device, dtype=boxes.dtype)
    in_cols = (col >= start[..., 0:1]) & (col < end[..., 0:1])  # [B, S, cols]
    in_rows = (row >= start[..., 1:2]) & (row < end[..., 1:2])  # [B, S, rows]
    return (in_rows[..., :, None] & in_cols[..., None, :]).flatten(2).transpose(1, 2)


class LayoutCrossAttention(DecoupledCrossAttention):
    """IP-Adapter's decoupled cross-attention, each subject's ``tokens`` (``[B, S·N, D]``, subject-major) attended
    only by the queries inside its rectangle of ``boxes [B, S, 4]`` (see the module doc)."""

    def __init__(self, layers: dict[str, IPAdapterLayer], tokens: Tensor, boxes: Tensor, image_size: tuple[int, int],
                 scale: float) -> None:
        super().__init__(layers, tokens, scale)
        self.boxes = boxes
        self.image_size = image_size

    def image_attention(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        inside = box_token_masks(self.boxes.to(query.device, torch.float32), query.shape[2], *self.image_size)
        background = ~inside.any(-1, keepdim=True)  # [B, L, 1]
        # background queries attend anywhere (finite), then their image attention is zeroed
        allowed = inside.repeat_interleave(key.shape[2] // inside.shape[-1], dim=-1) | background
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None], dropout_p=0.0)
        return merge_heads(attended) * (~background).to(query.dtype)


class MultiSubjectConditioner(Conditioner):
    """Subject images in 3D boxes: ``hidden_states [S, L, E]`` (each image's encoder hidden states, cached),
    ``phrase_embeds [S, P]`` and ``grounded [S]`` (a phrase was given), the boxes' corners ``lower, upper [S, 3]``,
    at strength ``scale``; ``adapter`` holds the grounding resampler and the image attention layers."""

    def __init__(self, adapter: IPAdapter, hidden_states: Tensor, phrase_embeds: Tensor, grounded: Tensor,
                 lower: Tensor, upper: Tensor, scale: float = 1.0) -> None:
        self.adapter = adapter
        self.layers = adapter.by_processor()
        self.hidden_states = hidden_states
        self.phrase_embeds = phrase_embeds
        self.grounded = grounded
        self.lower, self.upper = lower, upper
        self.scale = scale

    def subject_tokens(self, boxes: Tensor) -> Tensor:
        """``[V, S·N, D]``: every subject's tokens for its rectangles ``boxes [V, S, 4]`` in V views."""
        views = boxes.shape[0]
        with torch.no_grad():
            tokens = self.adapter.image_proj(
                self.hidden_states.repeat(views, 1, 1), self.phrase_embeds.repeat(views, 1),
                boxes.reshape(-1, 4).to(self.phrase_embeds), self.grounded.repeat(views))
        return tokens.reshape(views, -1, tokens.shape[-1])

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        if self.scale == 0:
            return ()  # the base model's attention, bit for bit
        if context.cameras is None:
            raise ValueError("MultiSubjectConditioner needs the cameras in its ConditionContext")
        boxes = projected_boxes(self.lower, self.upper, context.cameras)
        tokens = self.subject_tokens(boxes)
        batch = len(context.timesteps) if context.timesteps is not None else len(context.branch_labels) or len(boxes)
        boxes, tokens = tile_to_batch(boxes, batch), tile_to_batch(tokens, batch)
        if context.branch_labels:
            unconditional = torch.tensor([label in UNCONDITIONAL_BRANCHES for label in context.branch_labels])
            keep = ~tile_to_batch(unconditional, batch).to(boxes.device)
            boxes = boxes * keep.view(-1, 1, 1)  # empty rectangles: no image attention
        return [LayoutCrossAttention(self.layers, tokens, boxes, (context.cameras.height, context.cameras.width),
                                     self.scale)]
