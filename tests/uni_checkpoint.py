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
from ldm_reference import _conv, _linear, _norm, _resblock, _transformer
from safetensors.torch import save_file

PRE_EXTRACTOR = [(None, 32), (32, 64), (64, 64), (64, 128), (128, 128)]


def _local_resblock(keys: dict[str, tuple[int, ...]], name: str, cin: int, cout: int, temb: int,
                    inject: int) -> None:
    """LocalResBlock: FDN norms (``norm_in`` / ``norm_out``: 3×3 ``conv_gamma``, ``conv_beta`` of the level's
    features) where a ResBlock has GroupNorms (its ``in_layers.0`` / ``out_layers.0`` are Identity)."""
    _resblock(keys, name, cin, cout, temb)
    for norm, layer, channels in (("norm_in", "in_layers.0", cin), ("norm_out", "out_layers.0", cout)):
        del keys[f"{name}.{layer}.weight"], keys[f"{name}.{layer}.bias"]
        _conv(keys, f"{name}.{norm}.conv_gamma", inject, channels)
        _conv(keys, f"{name}.{norm}.conv_beta", inject, channels)


def local_adapter_shapes(unet_config: dict[str, Any], local_channels: int, inject_channels: list[int]) -> dict:
    """``local_adapter.*`` key -> shape for a base UNet of ``unet_config`` (diffusers names for its sizes)."""
    channels = list(unet_config["block_out_channels"])
    blocks = int(unet_config["layers_per_block"])
    attention = ["CrossAttn" in kind for kind in unet_config["down_block_types"]]
    context, model_channels = int(unet_config["cross_attention_dim"]), channels[0]
    temb = 4 * model_channels
    keys: dict[str, tuple[int, ...]] = {}
    _linear(keys, "time_embed.0", model_channels, temb)
    _linear(keys, "time_embed.2", temb, temb)
    _conv(keys, "input_blocks.0.0", int(unet_config["in_channels"]), model_channels)
    zero_conv_channels = [model_channels]
    index, ch = 1, model_channels
    for level, width in enumerate(channels):
        for _ in range(blocks):
            if index == 1 + level * (blocks + 1) and level < len(inject_channels):
                _local_resblock(keys, f"input_blocks.{index}.0", ch, width, temb, inject_channels[level])
            else:
                _resblock(keys, f"input_blocks.{index}.0", ch, width, temb)
            ch = width
            if attention[level]:
                _transformer(keys, f"input_blocks.{index}.1", ch, context, 1, linear=False)
            zero_conv_channels.append(ch)
            index += 1
        if level < len(channels) - 1:
            _conv(keys, f"input_blocks.{index}.0.op", ch, ch)
            zero_conv_channels.append(ch)
            index += 1
    _resblock(keys, "middle_block.0", ch, ch, temb)
    _transformer(keys, "middle_block.1", ch, context, 1, linear=False)
    _resblock(keys, "middle_block.2", ch, ch, temb)
    for i, width in enumerate(zero_conv_channels):
        _conv(keys, f"zero_convs.{i}.0", width, width, kernel=1)
    _conv(keys, "middle_block_out.0", ch, ch, kernel=1)
    previous = local_channels
    for i, (_, width) in enumerate(PRE_EXTRACTOR):
        _conv(keys, f"feature_extractor.pre_extractor.{2 * i}", previous, width)
        previous = width
    for i, width in enumerate(inject_channels):
        _conv(keys, f"feature_extractor.extractors.{i}.0", previous, width)
        _conv(keys, f"feature_extractor.zero_convs.{i}", width, width)
        previous = width
    return {f"local_adapter.{k}": v for k, v in keys.items()}


def global_adapter_shapes(in_dim: int, channel_mult: tuple[int, int] = (2, 4)) -> dict:
    """``global_adapter.*`` key -> shape (FeedForward(glu=True): ``net.0.proj`` is GEGLU's Linear(d, 2·inner))."""
    first, second = channel_mult
    out1, inner1 = in_dim * first, in_dim * first * 2
    out2, inner2 = in_dim * second, out1 * (second * 2 // first)
    keys: dict[str, tuple[int, ...]] = {}
    _norm(keys, "norm1", in_dim)
    _linear(keys, "ff1.net.0.proj", in_dim, inner1 * 2)
    _linear(keys, "ff1.net.2", inner1, out1)
    _norm(keys, "norm2", out1)
    _linear(keys, "ff2.net.0.proj", out1, inner2 * 2)
    _linear(keys, "ff2.net.2", inner2, out2)
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
