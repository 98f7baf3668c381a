"""The LDM (CompVis / Stability ``openaimodel``) UNet layout in diffusers' names: its architecture as a
``UNet2DConditionModel`` config and its weights' keys renamed, every key accounted for.

An LDM UNet is described by its ``unet_config.params`` (``model_channels``, ``channel_mult``,
``num_res_blocks``, ``attention_resolutions``, ``num_head_channels``, ``context_dim``...). Its weights
differ from diffusers' only in names: ``input_blocks`` / ``middle_block`` / ``output_blocks`` are
diffusers' down, mid and up blocks; each ResBlock's ``in_layers``/``emb_layers``/``out_layers`` its
``norm1``/``conv1``, ``time_emb_proj``, ``norm2``/``conv2``; the spatial transformers keep their names.
MVDream adds ``camera_embed`` (Linear → SiLU → Linear into the time embedding), which is diffusers'
``projection`` class embedding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

RESBLOCK_NAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
TOP_LEVEL_NAMES = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "camera_embed.0": "class_embedding.linear_1",
    "camera_embed.2": "class_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


def _levels(params: Mapping[str, Any]) -> tuple[list[int], list[bool]]:
    """Channels of each resolution level and whether it has attention (LDM counts resolutions by their
    downsampling factor 2^level in ``attention_resolutions``)."""
    mult = list(params["channel_mult"])
    channels = [int(params["model_channels"]) * m for m in mult]
    attention = [2**level in set(params["attention_resolutions"]) for level in range(len(mult))]
    return channels, attention


def unet_config_from_ldm(params: Mapping[str, Any], sample_size: int) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of an LDM UNet with spatial transformers and (MVDream) a
    ``camera_dim`` camera embedding. ``attention_head_dim`` holds head counts per level, as diffusers'
    Stable Diffusion configs do."""
    channels, attention = _levels(params)
    head_channels = int(params["num_head_channels"])
    if any(c % head_channels for c in channels):
        raise ValueError(f"num_head_channels {head_channels} does not divide the channels {channels}")
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": int(params["in_channels"]),
        "out_channels": int(params["out_channels"]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels,
        "layers_per_block": int(params["num_res_blocks"]),
        "attention_head_dim": [c // head_channels for c in channels],
        "cross_attention_dim": int(params["context_dim"]),
        "use_linear_projection": bool(params.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": int(params.get("transformer_depth", 1)),
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }
    if params.get("camera_dim"):
        config["class_embed_type"] = "projection"
        config["projection_class_embeddings_input_dim"] = int(params["camera_dim"])
    return config


def _block_prefixes(params: Mapping[str, Any]) -> dict[str, str]:
    """LDM module prefix -> diffusers prefix for every block of the UNet."""
    channels, attention = _levels(params)
    levels, blocks = len(channels), int(params["num_res_blocks"])
    prefixes = {"middle_block.0": "mid_block.resnets.0", "middle_block.1": "mid_block.attentions.0",
                "middle_block.2": "mid_block.resnets.1"}
    for level in range(levels):
        for j in range(blocks):
            index = 1 + level * (blocks + 1) + j
            prefixes[f"input_blocks.{index}.0"] = f"down_blocks.{level}.resnets.{j}"
            prefixes[f"input_blocks.{index}.1"] = f"down_blocks.{level}.attentions.{j}"
        if level < levels - 1:
            downsample = 1 + level * (blocks + 1) + blocks
            prefixes[f"input_blocks.{downsample}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
    for up in range(levels):
        has_attention = attention[levels - 1 - up]
        for j in range(blocks + 1):
            index = up * (blocks + 1) + j
            prefixes[f"output_blocks.{index}.0"] = f"up_blocks.{up}.resnets.{j}"
            if has_attention:
                prefixes[f"output_blocks.{index}.1"] = f"up_blocks.{up}.attentions.{j}"
        if up < levels - 1:
            last = up * (blocks + 1) + blocks
            prefixes[f"output_blocks.{last}.{2 if has_attention else 1}.conv"] = f"up_blocks.{up}.upsamplers.0.conv"
    return prefixes


_PARAMETER = re.compile(r"^(.*)\.(weight|bias)$")


def rename_ldm_unet(
    state: Mapping[str, Any], params: Mapping[str, Any], resblock_names: Mapping[str, str] = RESBLOCK_NAMES
) -> tuple[dict[str, Any], list[str]]:
    """``(diffusers state dict, LDM keys with no place in it)`` for an LDM UNet's weights ``state``
    (keys without the ``model.diffusion_model.`` prefix); ``resblock_names``: the ResBlock's module names."""
    prefixes = sorted(_block_prefixes(params).items(), key=lambda item: -len(item[0]))
    renamed: dict[str, Any] = {}
    unplaced: list[str] = []
    for key, value in state.items():
        match = _PARAMETER.match(key)
        module, kind = (match.group(1), match.group(2)) if match else (key, "")
        target = TOP_LEVEL_NAMES.get(module)
        for ldm, diffusers in prefixes if target is None else ():
            if module == ldm:
                target = diffusers
                break
            if module.startswith(ldm + "."):
                rest = module[len(ldm) + 1:]
                rest = resblock_names.get(rest) if ".resnets." in diffusers else rest
                target = f"{diffusers}.{rest}" if rest else None
                break
        if target is None or not kind:
            unplaced.append(key)
            continue
        renamed[f"{target}.{kind}"] = value
    return renamed, unplaced


def ldm_name(key: str, params: Mapping[str, Any], resblock_names: Mapping[str, str] = RESBLOCK_NAMES) -> str:
    """The LDM key of a diffusers UNet key (the inverse of :func:`rename_ldm_unet`), or ``key`` itself when it
    has none: to name a missing weight as the checkpoint would."""
    match = _PARAMETER.match(key)
    module, kind = (match.group(1), match.group(2)) if match else (key, "")
    top = {diffusers: ldm for ldm, diffusers in TOP_LEVEL_NAMES.items()}
    resnet = {diffusers: ldm for ldm, diffusers in resblock_names.items()}
    if module in top:
        return f"{top[module]}.{kind}"
    for ldm, diffusers in sorted(_block_prefixes(params).items(), key=lambda item: -len(item[1])):
        if module == diffusers:
            return f"{ldm}.{kind}"
        if module.startswith(diffusers + "."):
            rest = module[len(diffusers) + 1:]
            rest = resnet.get(rest, rest) if ".resnets." in diffusers else rest
            return f"{ldm}.{rest}.{kind}"
    return key
