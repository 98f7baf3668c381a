"""A garment image as extra cross-attention tokens (IP-Adapter plus, as IDM-VTON's try-on UNet carries it).

The image encoder's penultimate hidden states go through a Perceiver resampler (``encoder_hid_proj`` in
IDM-VTON's UNet weights) to a few tokens; every cross-attention module with image weights
(``<module>.processor.to_k_ip.weight`` / ``to_v_ip.weight`` in the UNet's state dict) adds
``scale * attention(query, to_k_ip(tokens), to_v_ip(tokens))`` to its text attention, before the output
projection (Ye et al. 2023's decoupled cross-attention). Written here from the paper and the published
key layout; a hook of :mod:`dreamsmith.guidance.attention`, so it composes with the other techniques.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamsmith.guidance.attention import AttentionHook, merge_heads

RESAMPLER_HEAD_DIM = 64
"""IDM-VTON's resampler attends with heads of 64 channels (its width 1280 gives 20 heads)."""


class PerceiverAttention(nn.Module):
    """Latent queries attending to the image features and themselves (keys: ``to_kv`` packed)."""

    def __init__(self, dim: int, inner: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        batch, length, _ = latents.shape
        split = lambda x: x.view(batch, x.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        key, value = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(split(self.to_q(latents)), split(key), split(value))
        return self.to_out(attended.transpose(1, 2).reshape(batch, length, -1))


class Resampler(nn.Module):
    """IP-Adapter plus's resampler: ``num_queries`` learned latents refined by ``depth`` Perceiver blocks over
    the image features ``[B, N, embedding_dim]``, projected to ``[B, num_queries, output_dim]``."""

    def __init__(self, dim: int, depth: int, inner: int, num_queries: int, embedding_dim: int, output_dim: int,
                 ff_mult: int = 4) -> None:
        super().__init__()
        heads = max(1, inner // RESAMPLER_HEAD_DIM)
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / math.sqrt(dim))
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, inner, heads),
                           nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                                         nn.Linear(dim * ff_mult, dim, bias=False))])
            for _ in range(depth))

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Resampler:
        """A resampler shaped like the weights ``state`` (keys without the ``encoder_hid_proj.`` prefix)."""
        depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
        _, num_queries, dim = state["latents"].shape
        inner = state["layers.0.0.to_q.weight"].shape[0]
        ff_mult = state["layers.0.1.1.weight"].shape[0] // dim
        module = cls(dim, depth, inner, num_queries, state["proj_in.weight"].shape[1],
                     state["proj_out.weight"].shape[0], ff_mult)
        module.load_state_dict(state)
        return module

    def forward(self, features: Tensor) -> Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1).to(features)
        features = self.proj_in(features)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class ImagePromptWeights(nn.Module):
    """The image keys and values of each cross-attention module, keyed by the module's processor name
    (``down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor``)."""

    def __init__(self, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.names = sorted(shapes)
        self.to_k_ip = nn.ModuleList(nn.Linear(shapes[n][1], shapes[n][0], bias=False) for n in self.names)
        self.to_v_ip = nn.ModuleList(nn.Linear(shapes[n][1], shapes[n][0], bias=False) for n in self.names)
        self.index = {name: i for i, name in enumerate(self.names)}

    @classmethod
    def split_from(cls, state: dict[str, Tensor]) -> tuple[ImagePromptWeights | None, dict[str, Tensor]]:
        """The image weights in a UNet's ``state`` (``<name>.to_k_ip.weight``) and the rest of it."""
        ip = {key: value for key, value in state.items() if ".to_k_ip." in key or ".to_v_ip." in key}
        rest = {key: value for key, value in state.items() if key not in ip}
        if not ip:
            return None, rest
        names = {key.rsplit(".to_", 1)[0] for key in ip}
        module = cls({name: tuple(ip[f"{name}.to_k_ip.weight"].shape) for name in names})
        for name in names:
            index = module.index[name]
            module.to_k_ip[index].weight.data.copy_(ip[f"{name}.to_k_ip.weight"])
            module.to_v_ip[index].weight.data.copy_(ip[f"{name}.to_v_ip.weight"])
        return module, rest


class ImagePromptAttention(AttentionHook):
    """Adds each module's attention over the image ``tokens [B, T, D]`` (see the module doc)."""

    _QUERY = "image_prompt_query"

    def __init__(self, weights: ImagePromptWeights, tokens: Tensor, scale: float = 1.0) -> None:
        self.weights = weights
        self.tokens = tokens
        self.scale = scale

    def applies_to(self, name: str, attn: Any) -> bool:
        return bool(attn.is_cross_attention) and name in self.weights.index

    def key_value(self, attn: Any, query: Tensor, key: Tensor, value: Tensor,
                  context: dict[str, Any]) -> tuple[Tensor, Tensor]:
        context[self._QUERY] = query
        return key, value

    def output(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        query = context[self._QUERY]
        index = self.weights.index[context["name"]]
        tokens = self.tokens.expand(query.shape[0], -1, -1).to(query) if len(self.tokens) == 1 else self.tokens
        split = lambda x: x.view(x.shape[0], -1, attn.heads, query.shape[-1]).transpose(1, 2)  # noqa: E731
        key, value = split(self.weights.to_k_ip[index](tokens)), split(self.weights.to_v_ip[index](tokens))
        attended = merge_heads(F.scaled_dot_product_attention(query, key, value)).to(hidden_states)
        return hidden_states + self.scale * attended
