"""IP-Adapter's image projections: an image encoder's output -> N image tokens in the UNet's text width.

Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion Models",
Sec. 3.2. Two published kinds, with the module names of the published checkpoints (``image_proj.*`` keys)
so those state dicts load as they are:

- :class:`ImageProjection` (``ip-adapter_sd15``, ``ip-adapter_sdxl``): the pooled, projected image
  embedding ``[B, D_img]`` -> a linear layer to ``N · D`` -> N tokens -> LayerNorm (keys ``proj.*``,
  ``norm.*``; N = 4 in the published files).
- :class:`PerceiverResampler` (the "plus" variants): N learned queries attend to the encoder's
  penultimate hidden states ``[B, L, D_enc]`` in ``depth`` perceiver blocks (Flamingo's resampler: the
  queries' keys and values are the image tokens and the queries themselves), then project to the text
  width and LayerNorm (keys ``latents``, ``proj_in.*``, ``layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}``,
  ``layers.{i}.1.{0,1,3}``, ``proj_out.*``, ``norm_out.*``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImageProjection(nn.Module):
    """``[B, D_img]`` -> ``[B, tokens, width]``: one linear layer cut into tokens, each LayerNormed."""

    def __init__(self, image_dim: int, width: int, tokens: int = 4) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(image_dim, tokens * width)
        self.norm = nn.LayerNorm(width)

    def forward(self, image_embeds: Tensor) -> Tensor:
        tokens = self.proj(image_embeds.to(self.proj.weight.dtype))
        return self.norm(tokens.reshape(image_embeds.shape[0], self.tokens, -1))


class PerceiverAttention(nn.Module):
    """The queries (latents) attend to the image tokens and to themselves (Flamingo's perceiver block).

    q and k are each scaled by d_head^(-1/4) before their product (as published: the same product as
    d_head^(-1/2) once, kinder to fp16).
    """

    def __init__(self, dim: int, head_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = head_dim * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, image_tokens: Tensor, latents: Tensor) -> Tensor:
        image_tokens = self.norm1(image_tokens)
        latents = self.norm2(latents)
        query = self._split(self.to_q(latents))
        key, value = (self._split(x) for x in self.to_kv(torch.cat([image_tokens, latents], dim=1)).chunk(2, -1))
        scale = self.head_dim ** -0.25
        weights = ((query * scale) @ (key * scale).transpose(-1, -2)).float().softmax(dim=-1).to(query.dtype)
        out = (weights @ value).transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.to_out(out)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm, linear up, GELU, linear down, no biases (keys ``0``, ``1``, ``3``)."""
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class PerceiverResampler(nn.Module):
    """``[B, L, D_enc]`` -> ``[B, queries, width]`` (IP-Adapter Plus's resampler, see the module doc)."""

    def __init__(self, embed_dim: int, dim: int, width: int, queries: int, depth: int, head_dim: int, heads: int,
                 ff_mult: int = 4) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, queries, dim) / dim ** 0.5)
        self.proj_in = nn.Linear(embed_dim, dim)
        self.proj_out = nn.Linear(dim, width)
        self.norm_out = nn.LayerNorm(width)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, head_dim, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        latents = self.latents.expand(hidden_states.shape[0], -1, -1)
        image_tokens = self.proj_in(hidden_states.to(self.proj_in.weight.dtype))
        for attention, ff in self.layers:
            latents = attention(image_tokens, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def projection_from_state_dict(state: dict[str, Tensor], head_dim: int = 64) -> nn.Module:
    """The projection a published ``image_proj`` state dict describes, with its weights loaded.

    Plain (``proj.weight [tokens · width, D_img]``): the token count is the published 4 unless
    ``norm.weight``'s width says otherwise. Plus: sizes from the shapes; heads = ``to_q`` rows / ``head_dim``
    (the published resamplers use 64-wide heads). Raises ``ValueError`` for any other layout.
    """
    if "proj.weight" in state and "norm.weight" in state:
        width = state["norm.weight"].shape[0]
        rows, image_dim = state["proj.weight"].shape
        if rows % width:
            raise ValueError(f"image_proj.proj has {rows} outputs, not a whole number of {width}-wide tokens")
        module: nn.Module = ImageProjection(image_dim, width, rows // width)
    elif "latents" in state and "proj_in.weight" in state:
        depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("layers."))
        _, queries, dim = state["latents"].shape
        inner = state["layers.0.0.to_q.weight"].shape[0]
        if inner % head_dim:
            raise ValueError(f"the resampler's {inner}-wide attention is not made of {head_dim}-wide heads")
        ff_mult = state["layers.0.1.1.weight"].shape[0] // dim
        module = PerceiverResampler(
            embed_dim=state["proj_in.weight"].shape[1], dim=dim, width=state["proj_out.weight"].shape[0],
            queries=queries, depth=depth, head_dim=head_dim, heads=inner // head_dim, ff_mult=ff_mult,
        )
    else:
        keys = ", ".join(sorted(state)[:4])
        raise ValueError(f"image_proj holds neither the plain (proj, norm) nor the plus (latents, proj_in, layers) "
                         f"layout (keys: {keys}, ...)")
    check_keys(set(module.state_dict()), set(state), "image_proj")
    module.load_state_dict(state, strict=True)
    return module


def check_keys(expected: set[str], given: set[str], part: str) -> None:
    """A ``ValueError`` naming (one line) the keys of ``part`` a state dict lacks or has beyond ``expected``."""
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(f"{part} does not fit its layout: missing {_some(missing)}; unexpected {_some(unexpected)}")


def _some(keys: list[str]) -> str:
    return (", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")) if keys else "none"
