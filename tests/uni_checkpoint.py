"""Synthetic Uni-ControlNet checkpoints in the authors' published layout (``models/local_adapter.py``,
``models/global_adapter.py``, ``configs/uni_v15.yaml`` of ShihaoZhaoZSH/Uni-ControlNet), for a tiny base UNet.

The keys and shapes are enumerated here from the LDM modules as the authors' code builds them (LocalAdapter:
``time_embed``, ``input_blocks`` with LocalResBlocks at the first block of each level, ``zero_convs.N.0``,
``middle_block``, ``middle_block_out.0``, ``feature_extractor``; GlobalAdapter: ``norm1``, ``ff1``, ``norm2``,
``ff2``), independently of dreamsmith's loader, so a loader bug cannot hide in a shared renaming.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

PRE_EXTRACTOR = [(None, 32), (32, 64), (64, 64), (64, 128), (128, 128)]


def _conv(keys: dict[str, tuple[int, ...]], name: str, out: int, inp: int, kernel: int) -> None:
    keys[f"{name}.weight"], keys[f"{name}.bias"] = (out, inp, kernel, kernel), (out,)


def _linear(keys: dict[str, tuple[int, ...]], name: str, out: int, inp: int, bias: bool = True) -> None:
    keys[f"{name}.weight"] = (out, inp)
    if bias:
        keys[f"{name}.bias"] = (out,)


def _norm(keys: dict[str, tuple[int, ...]], name: str, channels: int) -> None:
    keys[f"{name}.weight"], keys[f"{name}.bias"] = (channels,), (channels,)


def _resblock(keys, name: str, cin: int, cout: int, temb: int, inject: int | None) -> None:
    if inject is None:
        _norm(keys, f"{name}.in_layers.0", cin)
        _norm(keys, f"{name}.out_layers.0", cout)
    else:  # LocalResBlock: FDN norms, in_layers.0 / out_layers.0 are Identity
        for norm, channels in (("norm_in", cin), ("norm_out", cout)):
            _conv(keys, f"{name}.{norm}.conv_gamma", channels, inject, 3)
            _conv(keys, f"{name}.{norm}.conv_beta", channels, inject, 3)
    _conv(keys, f"{name}.in_layers.2", cout, cin, 3)
    _linear(keys, f"{name}.emb_layers.1", cout, temb)
    _conv(keys, f"{name}.out_layers.3", cout, cout, 3)
    if cin != cout:
        _conv(keys, f"{name}.skip_connection", cout, cin, 1)


def _transformer(keys, name: str, channels: int, context: int) -> None:
    _norm(keys, f"{name}.norm", channels)
    _conv(keys, f"{name}.proj_in", channels, channels, 1)
    block = f"{name}.transformer_blocks.0"
    for attn, source in (("attn1", channels), ("attn2", context)):
        _linear(keys, f"{block}.{attn}.to_q", channels, channels, bias=False)
        _linear(keys, f"{block}.{attn}.to_k", channels, source, bias=False)
        _linear(keys, f"{block}.{attn}.to_v", channels, source, bias=False)
        _linear(keys, f"{block}.{attn}.to_out.0", channels, channels)
    _linear(keys, f"{block}.ff.net.0.proj", channels * 8, channels)
    _linear(keys, f"{block}.ff.net.2", channels, channels * 4)
    for norm in ("norm1", "norm2", "norm3"):
        _norm(keys, f"{block}.{norm}", channels)
    _conv(keys, f"{name}.proj_out", channels, channels, 1)


def local_adapter_shapes(unet_config: dict[str, Any], local_channels: int, inject_channels: list[int]) -> dict:
    """``local_adapter.*`` key -> shape for a base UNet of ``unet_config`` (diffusers names for its sizes)."""
    channels = list(unet_config["block_out_channels"])
    blocks = int(unet_config["layers_per_block"])
    attention = ["CrossAttn" in kind for kind in unet_config["down_block_types"]]
    context, model_channels = int(unet_config["cross_attention_dim"]), channels[0]
    temb = 4 * model_channels
    keys: dict[str, tuple[int, ...]] = {}
    _linear(keys, "time_embed.0", temb, model_channels)
    _linear(keys, "time_embed.2", temb, temb)
    _conv(keys, "input_blocks.0.0", model_channels, int(unet_config["in_channels"]), 3)
    zero_conv_channels = [model_channels]
    index, ch = 1, model_channels
    for level, width in enumerate(channels):
        for _ in range(blocks):
            inject = inject_channels[level] if index == 1 + level * (blocks + 1) and level < len(inject_channels) \
                else None
            _resblock(keys, f"input_blocks.{index}.0", ch, width, temb, inject)
            ch = width
            if attention[level]:
                _transformer(keys, f"input_blocks.{index}.1", ch, context)
            zero_conv_channels.append(ch)
            index += 1
        if level < len(channels) - 1:
            _conv(keys, f"input_blocks.{index}.0.op", ch, ch, 3)
            zero_conv_channels.append(ch)
            index += 1
    _resblock(keys, "middle_block.0", ch, ch, temb, None)
    _transformer(keys, "middle_block.1", ch, context)
    _resblock(keys, "middle_block.2", ch, ch, temb, None)
    for i, width in enumerate(zero_conv_channels):
        _conv(keys, f"zero_convs.{i}.0", width, width, 1)
    _conv(keys, "middle_block_out.0", ch, ch, 1)
    previous = local_channels
    for i, (_, width) in enumerate(PRE_EXTRACTOR):
        _conv(keys, f"feature_extractor.pre_extractor.{2 * i}", width, previous, 3)
        previous = width
    for i, width in enumerate(inject_channels):
        _conv(keys, f"feature_extractor.extractors.{i}.0", width, previous, 3)
        _conv(keys, f"feature_extractor.zero_convs.{i}", width, width, 3)
        previous = width
    return {f"local_adapter.{k}": v for k, v in keys.items()}


def global_adapter_shapes(in_dim: int, channel_mult: tuple[int, int] = (2, 4)) -> dict:
    """``global_adapter.*`` key -> shape (FeedForward(glu=True): ``net.0.proj`` is GEGLU's Linear(d, 2·inner))."""
    first, second = channel_mult
    out1, inner1 = in_dim * first, in_dim * first * 2
    out2, inner2 = in_dim * second, out1 * (second * 2 // first)
    keys: dict[str, tuple[int, ...]] = {}
    _norm(keys, "norm1", in_dim)
    _linear(keys, "ff1.net.0.proj", inner1 * 2, in_dim)
    _linear(keys, "ff1.net.2", out1, inner1)
    _norm(keys, "norm2", out1)
    _linear(keys, "ff2.net.0.proj", inner2 * 2, out1)
    _linear(keys, "ff2.net.2", out2, inner2)
    return {f"global_adapter.{k}": v for k, v in keys.items()}


def zero_conv_keys(shapes: dict) -> list[str]:
    """The local adapter's output zero convolutions (its residuals are exactly zero when these are)."""
    return [k for k in shapes if k.startswith(("local_adapter.zero_convs.", "local_adapter.middle_block_out."))]


def write_uni_checkpoint(
    path: Path, unet_config: dict[str, Any], seed: int = 0, local: bool = True, global_dim: int | None = None,
    zero_outputs: bool = False, local_channels: int = 21, inject_channels: tuple[int, ...] = (6, 10),
    drop: tuple[str, ...] = (), extra: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
    """Write a random checkpoint (and return its tensors) with SD's own keys beside the adapters, as uni.ckpt
    has them; ``zero_outputs``: the zero convolutions as initialised (zeros); ``drop`` / ``extra``: keys to
    leave out / add (for the loader's refusals)."""
    shapes: dict[str, tuple[int, ...]] = {}
    if local:
        shapes.update(local_adapter_shapes(unet_config, local_channels, list(inject_channels)))
    if global_dim:
        shapes.update(global_adapter_shapes(global_dim))
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator) * 0.2 for k, shape in shapes.items() if k not in drop}
    if zero_outputs:
        for key in zero_conv_keys(shapes):
            state[key] = torch.zeros(shapes[key])
    for key in extra:
        state[key] = torch.zeros(2)
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)  # the base model's, ignored
    state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.zeros(1)
    state["betas"] = torch.zeros(1)
    save_file(state, path)
    return state
