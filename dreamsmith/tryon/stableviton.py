"""StableVITON (Kim et al. 2024): zero-initialised cross-attention from a garment encoder into the decoder.

The published checkpoint (``rlawjdghek/StableVITON``, ``VITONHD.ckpt``, CC BY-NC-SA 4.0: research only,
never shipped here) is in the LDM layout: ``model.diffusion_model.*`` an SD 1.5 UNet reading 13 channels
(noisy latents, the agnostic image's latents, its mask, the DensePose image's latents) plus
``warp_flow_blks.{i}`` (spatial transformers whose cross-attention reads garment features) and
``warp_zero_convs.{i}`` (1x1 convolutions, zero at initialisation); ``control_model.*`` the garment
encoder, a copy of the UNet's encoder (ControlNet-like, without zero convolutions) whose first block adds
the garment's latents through ``cond_first_block``. Before each decoder block but the lowest level's,
the decoder's features ``h`` become ``h + zero_conv(transformer(h, garment feature))``, the garment
feature being the encoder's output at the mirrored resolution. Here the UNet and the encoder are
diffusers modules (renamed by :mod:`dreamsmith.guidance.ldm_unet`) and the blocks run as forward
pre-hooks of the decoder's resnets; no code of the original is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.ldm_unet import rename_ldm_unet, unet_config_from_ldm

LICENCE = "CC BY-NC-SA 4.0 (non-commercial; weights not shipped)"
PARAMS: dict[str, Any] = {
    "image_size": 32, "in_channels": 13, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8, "use_spatial_transformer": True,
    "transformer_depth": 1, "context_dim": 768, "legacy": False,
}
"""The published ``configs/VITONHD.yaml`` ``unet_config.params`` (image_size: the latent height 64 / 2)."""
BASE, CONTROL, WARP, ZERO = "model.diffusion_model.", "control_model.", "warp_flow_blks.", "warp_zero_convs."


def _diffusers_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet config; a fixed head count (``num_heads``) or fixed head width (``num_head_channels``)."""
    base = int(params["model_channels"])
    heads = params.get("num_heads", -1)
    if params.get("num_head_channels", -1) in (-1, None):
        config = unet_config_from_ldm({**params, "num_head_channels": base // int(heads)}, int(params["image_size"]))
        config["attention_head_dim"] = [int(heads)] * len(params["channel_mult"])
        return config
    return unet_config_from_ldm(params, int(params["image_size"]))


def _heads(params: Mapping[str, Any], channels: int) -> int:
    if params.get("num_head_channels", -1) not in (-1, None):
        return channels // int(params["num_head_channels"])
    return int(params["num_heads"])


class GarmentWarp(nn.Module):
    """One decoder block's garment cross-attention: a spatial transformer over ``channels`` reading garment
    features of ``context`` channels, and its zero-initialised 1x1 convolution."""

    def __init__(self, channels: int, context: int, heads: int, linear: bool, groups: int = 32) -> None:
        super().__init__()
        from diffusers import Transformer2DModel

        self.channels = channels
        self.transformer = Transformer2DModel(num_attention_heads=heads, attention_head_dim=channels // heads,
                                              in_channels=channels, cross_attention_dim=context,
                                              norm_num_groups=groups, use_linear_projection=linear)
        self.zero_conv = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)

    def forward(self, h: Tensor, tokens: Tensor) -> Tensor:
        """``h [B, channels, H, W]`` plus the block's answer to garment ``tokens [B, N, context]``."""
        return h + self.zero_conv(self.transformer(h, encoder_hidden_states=tokens).sample)


class GarmentEncoder(nn.Module):
    """The encoder copy: the UNet's ``conv_in``, time embedding, down and mid blocks, and ``cond_first`` adding
    the garment's latents after ``conv_in``; returns every encoder output (LDM's ``input_blocks`` order, then
    the middle block's)."""

    def __init__(self, unet: Any, garment_channels: int) -> None:
        super().__init__()
        self.unet = unet
        self.cond_first = nn.Conv2d(garment_channels, unet.config.block_out_channels[0], 3, padding=1)

    def forward(self, sample: Tensor, garment_latents: Tensor, timestep: Tensor, context: Tensor) -> list[Tensor]:
        unet = self.unet
        embedding = unet.time_embedding(unet.time_proj(timestep.reshape(-1).expand(len(sample))).to(sample.dtype))
        h = unet.conv_in(sample) + self.cond_first(garment_latents)
        outputs = [h]
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, residuals = block(h, temb=embedding, encoder_hidden_states=context)
            else:
                h, residuals = block(h, temb=embedding)
            outputs.extend(residuals)
        outputs.append(unet.mid_block(h, embedding, encoder_hidden_states=context))
        return outputs


class StableVITON(nn.Module):
    """The try-on UNet (``unet``), its garment encoder and its decoder blocks' garment warps."""

    def __init__(self, unet: Any, encoder: GarmentEncoder, warps: nn.ModuleList) -> None:
        super().__init__()
        self.unet, self.encoder, self.warps = unet, encoder, warps

    @classmethod
    def from_ldm_state(cls, state: Mapping[str, Tensor], params: Mapping[str, Any] = PARAMS,
                       sample_size: int | None = None) -> StableVITON:
        """Build and load from the published checkpoint's tensors; every key of the three parts is placed.
        ``sample_size``: the latent size the UNet runs at (default the config's ``image_size``)."""
        from diffusers import UNet2DConditionModel

        config = _diffusers_config(params)
        config["sample_size"] = sample_size or config["sample_size"]
        base = {k.removeprefix(BASE): v for k, v in state.items() if k.startswith(BASE)}
        warp_keys = {k: v for k, v in base.items() if k.startswith((WARP, ZERO))}
        unet = UNet2DConditionModel.from_config(config)
        renamed, unplaced = rename_ldm_unet({k: v for k, v in base.items() if k not in warp_keys}, params)
        _load(unet, renamed, unplaced, "model.diffusion_model")
        control = {k.removeprefix(CONTROL): v for k, v in state.items() if k.startswith(CONTROL)}
        first = {k.removeprefix("cond_first_block.0."): v for k, v in control.items()
                 if k.startswith("cond_first_block.0.")}
        if not first:
            raise ModelLoadError("the checkpoint has no control_model.cond_first_block: not StableVITON's layout")
        encoder = GarmentEncoder(UNet2DConditionModel.from_config(config), first["weight"].shape[1])
        encoder.cond_first.load_state_dict(first)
        renamed, unplaced = rename_ldm_unet({k: v for k, v in control.items()
                                             if not k.startswith("cond_first_block.")}, params)
        _load(encoder.unet, renamed, unplaced, "control_model", encoder_only=True)
        count = len({k.split(".")[1] for k in warp_keys if k.startswith(WARP)})
        warps = nn.ModuleList()
        linear = bool(params.get("use_linear_in_transformer", False))
        for i in range(count):
            needed = (f"{ZERO}{i}.weight", f"{WARP}{i}.transformer_blocks.0.attn2.to_k.weight")
            if any(key not in warp_keys for key in needed):
                missing = key_list([BASE + k for k in needed if k not in warp_keys], "missing")
                raise ModelLoadError(f"garment warp {i} is incomplete: {missing}")
            channels = warp_keys[needed[0]].shape[0]
            warp = GarmentWarp(channels, warp_keys[needed[1]].shape[1], _heads(params, channels), linear)
            own = {f"{WARP}{i}.{k}": v for k, v in warp.transformer.state_dict().items()}
            own.update({f"{ZERO}{i}.{k}": v for k, v in warp.zero_conv.state_dict().items()})
            _check_keys(own, {k: v for k, v in warp_keys.items() if k.startswith((f"{WARP}{i}.", f"{ZERO}{i}."))},
                        f"garment warp {i}")
            warp.transformer.load_state_dict({k.removeprefix(f"{WARP}{i}."): v for k, v in warp_keys.items()
                                              if k.startswith(f"{WARP}{i}.")})
            warp.zero_conv.load_state_dict({k.removeprefix(f"{ZERO}{i}."): v for k, v in warp_keys.items()
                                            if k.startswith(f"{ZERO}{i}.")})
            warps.append(warp)
        return cls(unet, encoder, warps)

    def garment_features(self, features: list[Tensor]) -> list[Tensor]:
        """The encoder outputs the warps read, in decoder order: the middle block's and the lowest level's
        are skipped, then the rest from the deepest to the first."""
        skipped = int(self.unet.config.layers_per_block) + 1
        return list(reversed(features[:-1][: len(features) - 1 - skipped]))

    def garment_tokens(self, sample: Tensor, timestep: Tensor, context: Tensor,
                       garment_latents: Sequence[Tensor]) -> list[Tensor]:
        """Each warp's garment tokens ``[B, N, C]``: the encoder's features of every garment (latents
        ``[B, 4, h, w]`` each) flattened and, for several garments, concatenated (one garment's tokens are
        exactly StableVITON's; the same garment twice reads as once, up to rounding)."""
        per_garment = [self.garment_features(self.encoder(sample, latents, timestep, context))
                       for latents in garment_latents]
        return [torch.cat([feature.flatten(2).transpose(1, 2) for feature in features], dim=1)
                for features in zip(*per_garment, strict=True)]

    @contextlib.contextmanager
    def warps_active(self, garments: list[Tensor]) -> Iterator[None]:
        """Run each warp before its decoder resnet (the decoder's features are that resnet's input's first
        channels, before the skip connection)."""
        resnets = [resnet for block in self.unet.up_blocks[1:] for resnet in block.resnets]
        if len(resnets) != len(self.warps) or len(garments) != len(self.warps):
            raise ModelLoadError(f"{len(self.warps)} garment warps for {len(resnets)} decoder blocks and "
                                 f"{len(garments)} garment features")

        def hook(warp: GarmentWarp, garment: Tensor) -> Any:
            def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
                joined = args[0]
                h, skip = joined[:, :warp.channels], joined[:, warp.channels:]
                return (torch.cat([warp(h, garment), skip], dim=1), *args[1:])
            return pre_hook

        handles = [resnet.register_forward_pre_hook(hook(warp, garment))
                   for resnet, warp, garment in zip(resnets, self.warps, garments, strict=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, sample: Tensor, timestep: Tensor, context: Tensor,
                garment_latents: Tensor | Sequence[Tensor]) -> Tensor:
        """The try-on prediction for ``sample [B, 13, h, w]`` with the garment's latents ``[B, 4, h, w]`` (or a
        list of several garments') and the cross-attention ``context`` (the garments' image embeddings)."""
        garments = [garment_latents] if isinstance(garment_latents, Tensor) else list(garment_latents)
        with self.warps_active(self.garment_tokens(sample, timestep, context, garments)):
            return self.unet(sample, timestep, encoder_hidden_states=context).sample


def _load(module: nn.Module, state: dict[str, Tensor], unplaced: list[str], where: str,
          encoder_only: bool = False) -> None:
    if unplaced:
        raise ModelLoadError(f"{where} keys with no place in the UNet: {key_list(unplaced, 'unexpected')}")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if encoder_only:
        missing = [k for k in missing if not k.startswith(("up_blocks.", "conv_norm_out.", "conv_out."))]
    if missing or unexpected:
        raise ModelLoadError(f"{where} does not fit the architecture: {key_list(missing, 'missing')}; "
                             f"{key_list(unexpected, 'unexpected')}")


def _check_keys(own: Mapping[str, Tensor], given: Mapping[str, Tensor], where: str) -> None:
    missing = [BASE + k for k in own if k not in given]
    unexpected = [BASE + k for k in given if k not in own]
    if missing or unexpected:
        raise ModelLoadError(f"{where} does not fit its layout: {key_list(missing, 'missing')}; "
                             f"{key_list(unexpected, 'unexpected')}")


def key_list(keys: Sequence[str], what: str, shown: int = 4) -> str:
    """``"2 missing: a, b"`` (the first ``shown`` keys named, then how many more)."""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {what}" + (f": {', '.join(keys[:shown])}{more}" if keys else "")
