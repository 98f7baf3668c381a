"""An independent forward of MVDream's multi-view UNet, written from its LDM architecture as plain functions
over an LDM-layout state dict (no diffusers), and random weights in that layout.

The architecture (MVDream's ``MultiViewUNetModel`` with SD 2.x settings: spatial transformers with
linear projections, GEGLU feed-forward, nearest-neighbour upsampling, no scale-shift norm):

- time embedding: [cos, sin] sinusoids of t, Linear → SiLU → Linear; plus the camera, Linear → SiLU → Linear;
- input blocks: a conv, then per level ``num_res_blocks`` × (ResBlock [+ transformer]) and a stride-2
  conv ``op`` between levels; middle: ResBlock, transformer, ResBlock; output blocks mirror the input
  ones on the concatenated skips, with a nearest ×2 upsampling ``conv`` closing each level but the last;
- transformer block: self-attention over the F views of a group folded into one sequence
  ``(b f) l c -> b (f l) c``, then per-view cross-attention to the text, then the feed-forward.

Used by the converter test: a checkpoint in the official key layout is built here, converted, and the
converted diffusers model must agree with :func:`forward` on the same weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

TINY_PARAMS: dict[str, Any] = {
    "image_size": 4,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [1],
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "num_head_channels": 16,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 32,
    "use_checkpoint": False,
    "legacy": False,
    "camera_dim": 16,
}
"""A tiny UNet in MVDream's config format (its configs/sd-v2-base.yaml ``unet_config.params``; image_size is
the latent size), as wide as ``conftest``'s text encoder, so the converted model runs with ``tiny_sd_dir``'s
components."""


def _linear(shapes: dict[str, tuple[int, ...]], name: str, n_in: int, n_out: int, bias: bool = True) -> None:
    shapes[f"{name}.weight"] = (n_out, n_in)
    if bias:
        shapes[f"{name}.bias"] = (n_out,)


def _conv(shapes: dict[str, tuple[int, ...]], name: str, n_in: int, n_out: int, kernel: int = 3) -> None:
    shapes[f"{name}.weight"] = (n_out, n_in, kernel, kernel)
    shapes[f"{name}.bias"] = (n_out,)


def _norm(shapes: dict[str, tuple[int, ...]], name: str, channels: int) -> None:
    shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (channels,)


def _resblock(shapes: dict[str, tuple[int, ...]], name: str, n_in: int, n_out: int, emb: int) -> None:
    _norm(shapes, f"{name}.in_layers.0", n_in)
    _conv(shapes, f"{name}.in_layers.2", n_in, n_out)
    _linear(shapes, f"{name}.emb_layers.1", emb, n_out)
    _norm(shapes, f"{name}.out_layers.0", n_out)
    _conv(shapes, f"{name}.out_layers.3", n_out, n_out)
    if n_in != n_out:
        _conv(shapes, f"{name}.skip_connection", n_in, n_out, kernel=1)


def _transformer(shapes: dict[str, tuple[int, ...]], name: str, channels: int, context: int, depth: int,
                 linear: bool = True) -> None:
    """A spatial transformer's keys; ``linear``: linear projections in and out (SD 2.x), else 1×1 convs (SD 1.x)."""
    _norm(shapes, f"{name}.norm", channels)
    for projection in ("proj_in", "proj_out"):
        if linear:
            _linear(shapes, f"{name}.{projection}", channels, channels)
        else:
            _conv(shapes, f"{name}.{projection}", channels, channels, kernel=1)
    for d in range(depth):
        block = f"{name}.transformer_blocks.{d}"
        for attn, source in (("attn1", channels), ("attn2", context)):
            _linear(shapes, f"{block}.{attn}.to_q", channels, channels, bias=False)
            _linear(shapes, f"{block}.{attn}.to_k", source, channels, bias=False)
            _linear(shapes, f"{block}.{attn}.to_v", source, channels, bias=False)
            _linear(shapes, f"{block}.{attn}.to_out.0", channels, channels)
        _linear(shapes, f"{block}.ff.net.0.proj", channels, channels * 8)
        _linear(shapes, f"{block}.ff.net.2", channels * 4, channels)
        for k in (1, 2, 3):
            _norm(shapes, f"{block}.norm{k}", channels)


def layout(params: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key of the LDM UNet (without ``model.diffusion_model.``) and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    base, emb = params["model_channels"], params["model_channels"] * 4
    depth, context = params["transformer_depth"], params["context_dim"]
    attention = set(params["attention_resolutions"])
    _linear(shapes, "time_embed.0", base, emb)
    _linear(shapes, "time_embed.2", emb, emb)
    _linear(shapes, "camera_embed.0", params["camera_dim"], emb)
    _linear(shapes, "camera_embed.2", emb, emb)
    _conv(shapes, "input_blocks.0.0", params["in_channels"], base)
    skips, ch, ds, index = [base], base, 1, 1
    for level, mult in enumerate(params["channel_mult"]):
        for _ in range(params["num_res_blocks"]):
            _resblock(shapes, f"input_blocks.{index}.0", ch, base * mult, emb)
            ch = base * mult
            if ds in attention:
                _transformer(shapes, f"input_blocks.{index}.1", ch, context, depth)
            skips.append(ch)
            index += 1
        if level != len(params["channel_mult"]) - 1:
            _conv(shapes, f"input_blocks.{index}.0.op", ch, ch)
            skips.append(ch)
            ds, index = ds * 2, index + 1
    _resblock(shapes, "middle_block.0", ch, ch, emb)
    _transformer(shapes, "middle_block.1", ch, context, depth)
    _resblock(shapes, "middle_block.2", ch, ch, emb)
    index = 0
    for level, mult in reversed(list(enumerate(params["channel_mult"]))):
        for i in range(params["num_res_blocks"] + 1):
            _resblock(shapes, f"output_blocks.{index}.0", ch + skips.pop(), base * mult, emb)
            ch = base * mult
            layer = 1
            if ds in attention:
                _transformer(shapes, f"output_blocks.{index}.1", ch, context, depth)
                layer = 2
            if level and i == params["num_res_blocks"]:
                _conv(shapes, f"output_blocks.{index}.{layer}.conv", ch, ch)
                ds //= 2
            index += 1
    _norm(shapes, "out.0", ch)
    _conv(shapes, "out.2", base, params["out_channels"])
    return shapes


def random_state(params: dict[str, Any], seed: int = 0) -> dict[str, Tensor]:
    """Random weights in the LDM layout (norms near 1, everything else small but non-zero)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout(params).items():
        values = torch.randn(shape, generator=generator)
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        is_norm_weight = key.endswith(".weight") and len(shape) == 1
        state[key] = 1 + 0.1 * values if is_norm_weight else values / math.sqrt(max(fan_in, 1)) * 0.5
    return state


def _timestep_embedding(t: Tensor, dim: int) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Weights:
    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = state

    def has(self, name: str) -> bool:
        return f"{name}.weight" in self.state

    def linear(self, name: str, x: Tensor) -> Tensor:
        return F.linear(x, self.state[f"{name}.weight"], self.state.get(f"{name}.bias"))

    def conv(self, name: str, x: Tensor, stride: int = 1) -> Tensor:
        weight = self.state[f"{name}.weight"]
        return F.conv2d(x, weight, self.state[f"{name}.bias"], stride=stride, padding=weight.shape[-1] // 2)

    def group_norm(self, name: str, x: Tensor, eps: float = 1e-5) -> Tensor:
        return F.group_norm(x, 32, self.state[f"{name}.weight"], self.state[f"{name}.bias"], eps)

    def layer_norm(self, name: str, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.state[f"{name}.weight"], self.state[f"{name}.bias"])


def _resblock_forward(w: _Weights, name: str, x: Tensor, emb: Tensor) -> Tensor:
    h = w.conv(f"{name}.in_layers.2", F.silu(w.group_norm(f"{name}.in_layers.0", x)))
    h = h + w.linear(f"{name}.emb_layers.1", F.silu(emb))[:, :, None, None]
    h = w.conv(f"{name}.out_layers.3", F.silu(w.group_norm(f"{name}.out_layers.0", h)))
    skip = w.conv(f"{name}.skip_connection", x) if w.has(f"{name}.skip_connection") else x
    return skip + h


def _attention(w: _Weights, name: str, x: Tensor, source: Tensor, head_channels: int) -> Tensor:
    q, k, v = (w.linear(f"{name}.to_{p}", y) for p, y in (("q", x), ("k", source), ("v", source)))
    heads = q.shape[-1] // head_channels

    def split(y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], y.shape[1], heads, head_channels).transpose(1, 2)

    weights = (split(q) @ split(k).transpose(-1, -2) * head_channels**-0.5).softmax(dim=-1)
    out = (weights @ split(v)).transpose(1, 2).reshape(q.shape)
    return w.linear(f"{name}.to_out.0", out)


def _transformer_forward(w: _Weights, name: str, x: Tensor, context: Tensor, views: int, head_channels: int) -> Tensor:
    batch, channels, height, width = x.shape
    h = w.group_norm(f"{name}.norm", x, eps=1e-6).reshape(batch, channels, -1).transpose(1, 2)
    h = w.linear(f"{name}.proj_in", h)
    block = 0
    while w.has(f"{name}.transformer_blocks.{block}.norm1"):
        b = f"{name}.transformer_blocks.{block}"
        folded = h.reshape(batch // views, views * h.shape[1], channels)
        normed = w.layer_norm(f"{b}.norm1", folded)
        folded = _attention(w, f"{b}.attn1", normed, normed, head_channels) + folded
        h = folded.reshape(batch, -1, channels)
        h = _attention(w, f"{b}.attn2", w.layer_norm(f"{b}.norm2", h), context, head_channels) + h
        value, gate = w.linear(f"{b}.ff.net.0.proj", w.layer_norm(f"{b}.norm3", h)).chunk(2, dim=-1)
        h = w.linear(f"{b}.ff.net.2", value * F.gelu(gate)) + h
        block += 1
    h = w.linear(f"{name}.proj_out", h)
    return h.transpose(1, 2).reshape(batch, channels, height, width) + x


def forward(state: dict[str, Tensor], params: dict[str, Any], x: Tensor, t: Tensor, context: Tensor,
            camera: Tensor, views: int) -> Tensor:
    """ε̂ ``[B, C, h, w]`` of MVDream's UNet for ``x [B, C, h, w]`` (groups of ``views``), integer ``t [B]``,
    text ``context [B, L, D]`` and camera vectors ``camera [B, 16]``."""
    w = _Weights(state)
    head_channels = params["num_head_channels"]
    emb = w.linear("time_embed.2", F.silu(w.linear("time_embed.0", _timestep_embedding(t, params["model_channels"]))))
    emb = emb + w.linear("camera_embed.2", F.silu(w.linear("camera_embed.0", camera)))

    def block(prefix: str, h: Tensor) -> Tensor:
        for layer in range(3):
            name = f"{prefix}.{layer}"
            if w.has(f"{name}.in_layers.2"):
                h = _resblock_forward(w, name, h, emb)
            elif w.has(f"{name}.proj_in"):
                h = _transformer_forward(w, name, h, context, views, head_channels)
            elif w.has(f"{name}.op"):
                h = w.conv(f"{name}.op", h, stride=2)
            elif w.has(f"{name}.conv"):
                h = w.conv(f"{name}.conv", F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h

    h = w.conv("input_blocks.0.0", x)
    skips = [h]
    index = 1
    while w.has(f"input_blocks.{index}.0.in_layers.2") or w.has(f"input_blocks.{index}.0.op"):
        h = block(f"input_blocks.{index}", h)
        skips.append(h)
        index += 1
    h = block("middle_block", h)
    index = 0
    while w.has(f"output_blocks.{index}.0.in_layers.2"):
        h = block(f"output_blocks.{index}", torch.cat([h, skips.pop()], dim=1))
        index += 1
    return w.conv("out.2", F.silu(w.group_norm("out.0", h)))
