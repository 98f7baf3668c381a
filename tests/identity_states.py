"""Synthetic identity-adapter checkpoints in the published layouts: InstantX/InstantID's ``ip-adapter.bin``
(IP-Adapter Plus's keys, a 512-wide face embedding resampled to 16 tokens) and TencentARC's
``photomaker-v1.bin`` (``id_encoder.*`` = CLIP vision keys + ``visual_projection_2`` + ``fuse_module``;
``lora_weights.*`` = attention-processor LoRA keys), written from the published key lists, not from our modules."""

from __future__ import annotations

from pathlib import Path

import torch
from ip_adapter_states import plus_state

FACE_DIM = 512


def instantid_state(unet: torch.nn.Module, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """InstantID's adapter: resampler 512 -> 16 tokens (4 blocks, 64-wide heads) and the to_k_ip/to_v_ip layers."""
    return plus_state(unet, embed_dim=FACE_DIM, dim=32, queries=16, depth=4, heads=1, seed=seed)


def instantid_folder(folder: Path, unet: torch.nn.Module, sd_folder: Path, seed: int = 0) -> Path:
    """InstantX/InstantID's layout: ip-adapter.bin (pickled {image_proj, ip_adapter}) beside ControlNetModel/."""
    from conftest import build_tiny_controlnet

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(instantid_state(unet, seed), folder / "ip-adapter.bin")
    build_tiny_controlnet(folder / "ControlNetModel", sd_folder, seed=seed)
    return folder


def photomaker_state(unet: torch.nn.Module, projection: int = 24, seed: int = 0, rank: int = 2
                     ) -> dict[str, dict[str, torch.Tensor]]:
    """photomaker-v1.bin for ``unet``: a 1-layer CLIP vision tower (width 64, 32² images, 16² patches), its
    projection and a second one summing to the UNet's text width, the fuse MLPs, and a LoRA on every attention
    projection in the attention-processor key layout."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    generator = torch.Generator().manual_seed(seed)
    width = int(unet.config.cross_attention_dim)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            image_size=32, patch_size=16, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=1, projection_dim=projection))
    encoder = {key: value.clone() for key, value in clip.state_dict().items()}
    encoder["visual_projection_2.weight"] = rand(width - projection, 64)
    for mlp, fan_in in (("mlp1", 2 * width), ("mlp2", width)):
        encoder[f"fuse_module.{mlp}.layernorm.weight"] = 1 + rand(fan_in)
        encoder[f"fuse_module.{mlp}.layernorm.bias"] = rand(fan_in)
        encoder[f"fuse_module.{mlp}.fc1.weight"] = rand(width, fan_in)
        encoder[f"fuse_module.{mlp}.fc1.bias"] = rand(width)
        encoder[f"fuse_module.{mlp}.fc2.weight"] = rand(width, width)
        encoder[f"fuse_module.{mlp}.fc2.bias"] = rand(width)
    encoder["fuse_module.layer_norm.weight"] = 1 + rand(width)
    encoder["fuse_module.layer_norm.bias"] = rand(width)
    modules = dict(unet.named_modules())
    lora = {}
    for name in unet.attn_processors:
        attn = modules[name.removesuffix(".processor")]
        for projection_name, layer in (("to_q", attn.to_q), ("to_k", attn.to_k), ("to_v", attn.to_v),
                                       ("to_out", attn.to_out[0])):
            lora[f"unet.{name}.{projection_name}_lora.down.weight"] = rand(rank, layer.in_features)
            lora[f"unet.{name}.{projection_name}_lora.up.weight"] = rand(layer.out_features, rank)
    return {"id_encoder": encoder, "lora_weights": lora}
