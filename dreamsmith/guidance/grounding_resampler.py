"""MS-Diffusion's grounding resampler (Wang et al. 2024, "MS-Diffusion: Multi-subject Zero-shot Image
Personalization with Layout Guidance", Sec. 3.2): a subject image's encoder hidden states -> N image tokens, the
perceiver's queries initialised from the subject's phrase and 2D box rather than learned.

    g = [phrase embedding ; Fourier(x0, y0, x1, y1)]         (8 frequencies, sin and cos of each coordinate)
    queries = LayerNorm(MLP(g))  reshaped to [N, dim]         (or the learned ``grounding_latents`` without a phrase)
    tokens = norm_out(proj_out(attention_norm(perceiver(proj_in(hidden), queries))))

The perceiver blocks are IP-Adapter Plus's (:class:`~dreamsmith.guidance.image_projection.PerceiverAttention`,
:func:`~dreamsmith.guidance.image_projection.feed_forward`). Module names are the published checkpoint's
(``image_proj.*`` of ``ms_adapter.bin``): ``grounding_latents``, ``latent_proj.{0,2}``, ``latent_norm``, ``proj_in``,
``layers.{i}.{0,1}``, ``attention_norm``, ``proj_out``, ``norm_out``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dreamsmith.guidance.image_projection import PerceiverAttention, check_keys, feed_forward

FOURIER_FREQUENCIES = 8
"""The published resampler's box embedding: 8 frequencies (its ``fourier_freqs`` default)."""


def fourier_box_embedding(boxes: Tensor, frequencies: int = FOURIER_FREQUENCIES, temperature: float = 100.0) -> Tensor:
    """``[B, 4]`` boxes -> ``[B, frequencies · 2 · 4]``: sin and cos of each coordinate times temperature^(k/F),
    ordered frequency, then (sin, cos), then coordinate (as GLIGEN's and MS-Diffusion's ``FourierEmbedder``)."""
    bands = temperature ** (torch.arange(frequencies, device=boxes.device, dtype=boxes.dtype) / frequencies)
    angles = bands.view(1, 1, -1) * boxes.unsqueeze(-1)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).permute(0, 2, 3, 1).reshape(boxes.shape[0], -1)


class GroundingResampler(nn.Module):
    """``[B, L, D_enc]`` hidden states, ``[B, P]`` phrase embeddings and ``[B, 4]`` boxes -> ``[B, queries, width]``."""

    def __init__(self, embed_dim: int, dim: int, width: int, queries: int, depth: int, head_dim: int, heads: int,
                 phrase_dim: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.queries = queries
        self.phrase_dim = phrase_dim
        grounding = phrase_dim + FOURIER_FREQUENCIES * 2 * 4
        self.grounding_latents = nn.Parameter(torch.randn(1, queries, dim) / dim ** 0.5)
        self.latent_proj = nn.Sequential(nn.Linear(grounding, 2 * grounding), nn.GELU(),
                                         nn.Linear(2 * grounding, dim * queries))
        self.latent_norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(embed_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, head_dim, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )
        self.attention_norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, width)
        self.norm_out = nn.LayerNorm(width)

    def grounded_queries(self, phrase_embeds: Tensor, boxes: Tensor, grounded: Tensor) -> Tensor:
        """``[B, queries, dim]``: from the phrase and box where ``grounded [B]`` is true, else the learned ones
        (MS-Diffusion's ``drop_grounding_tokens``)."""
        batch, dim = boxes.shape[0], self.grounding_latents.shape[-1]
        embedding = torch.cat([phrase_embeds, fourier_box_embedding(boxes)], dim=-1).to(self.proj_in.weight.dtype)
        queries = self.latent_norm(self.latent_proj(embedding).view(batch, self.queries, dim))
        return torch.where(grounded.view(-1, 1, 1), queries, self.grounding_latents.expand(batch, -1, -1))

    def forward(self, hidden_states: Tensor, phrase_embeds: Tensor, boxes: Tensor, grounded: Tensor) -> Tensor:
        latents = self.grounded_queries(phrase_embeds, boxes, grounded)
        image_tokens = self.proj_in(hidden_states.to(self.proj_in.weight.dtype))
        for attention, ff in self.layers:
            latents = attention(image_tokens, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(self.attention_norm(latents)))


def grounding_resampler_from_state_dict(state: dict[str, Tensor], head_dim: int = 64) -> GroundingResampler:
    """The resampler a published ``image_proj`` state dict describes (sizes from the shapes; 64-wide heads and 8
    Fourier frequencies as published), its weights loaded; ``ValueError`` naming missing and unexpected keys."""
    required = ("grounding_latents", "latent_proj.0.weight", "proj_in.weight", "proj_out.weight",
                "layers.0.0.to_q.weight", "layers.0.1.1.weight")
    absent = [key for key in required if key not in state]
    if absent:
        raise ValueError(f"image_proj is not MS-Diffusion's grounding resampler: it lacks {', '.join(absent)}")
    _, queries, dim = state["grounding_latents"].shape
    inner = state["layers.0.0.to_q.weight"].shape[0]
    if inner % head_dim:
        raise ValueError(f"the resampler's {inner}-wide attention is not made of {head_dim}-wide heads")
    module = GroundingResampler(
        embed_dim=state["proj_in.weight"].shape[1], dim=dim, width=state["proj_out.weight"].shape[0],
        queries=queries, depth=1 + max(int(key.split(".")[1]) for key in state if key.startswith("layers.")),
        head_dim=head_dim, heads=inner // head_dim,
        phrase_dim=state["latent_proj.0.weight"].shape[1] - FOURIER_FREQUENCIES * 2 * 4,
        ff_mult=state["layers.0.1.1.weight"].shape[0] // dim,
    )
    check_keys(set(module.state_dict()), set(state), "image_proj")
    module.load_state_dict(state, strict=True)
    return module
