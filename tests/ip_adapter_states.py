"""Synthetic IP-Adapter checkpoints in the published layouts (h94/IP-Adapter), written from the key lists of
the published files rather than from our modules, so loading them tests the layout."""

from __future__ import annotations

from pathlib import Path

import torch

CLIP_PROJECTION_DIM = 24
CLIP_HIDDEN = 16


def ip_layers(unet: torch.nn.Module, width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{n}.to_k_ip.weight`` / ``{n}.to_v_ip.weight`` for each cross-attention layer, numbered by position among
    all attention processors (as the published files)."""
    modules = dict(unet.named_modules())
    state = {}
    for number, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        hidden = modules[name.removesuffix(".processor")].to_k.out_features
        for kind in ("to_k_ip", "to_v_ip"):
            state[f"{number}.{kind}.weight"] = torch.randn(hidden, width, generator=generator) * 0.3
    return state


def plain_state(unet: torch.nn.Module, image_dim: int = CLIP_PROJECTION_DIM, tokens: int = 4,
                seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """ip-adapter_sd15 / ip-adapter_sdxl: ``image_proj.{proj,norm}`` and the layers."""
    generator = torch.Generator().manual_seed(seed)
    width = int(unet.config.cross_attention_dim)
    image_proj = {
        "proj.weight": torch.randn(tokens * width, image_dim, generator=generator) * 0.3,
        "proj.bias": torch.randn(tokens * width, generator=generator) * 0.3,
        "norm.weight": 1 + 0.1 * torch.randn(width, generator=generator),
        "norm.bias": 0.1 * torch.randn(width, generator=generator),
    }
    return {"image_proj": image_proj, "ip_adapter": ip_layers(unet, width, generator)}


def plus_state(unet: torch.nn.Module, embed_dim: int = CLIP_HIDDEN, dim: int = 32, queries: int = 6, depth: int = 4,
               heads: int = 1, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """ip-adapter-plus: the perceiver resampler (64-wide heads, feed-forward ×4) and the layers."""
    generator = torch.Generator().manual_seed(seed)
    width = int(unet.config.cross_attention_dim)
    inner = 64 * heads

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    image_proj = {"latents": rand(1, queries, dim), "proj_in.weight": rand(dim, embed_dim), "proj_in.bias": rand(dim),
                  "proj_out.weight": rand(width, dim), "proj_out.bias": rand(width),
                  "norm_out.weight": 1 + rand(width), "norm_out.bias": rand(width)}
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            image_proj[f"layers.{i}.0.{norm}.weight"] = 1 + rand(dim)
            image_proj[f"layers.{i}.0.{norm}.bias"] = rand(dim)
        image_proj[f"layers.{i}.0.to_q.weight"] = rand(inner, dim)
        image_proj[f"layers.{i}.0.to_kv.weight"] = rand(2 * inner, dim)
        image_proj[f"layers.{i}.0.to_out.weight"] = rand(dim, inner)
        image_proj[f"layers.{i}.1.0.weight"] = 1 + rand(dim)
        image_proj[f"layers.{i}.1.0.bias"] = rand(dim)
        image_proj[f"layers.{i}.1.1.weight"] = rand(4 * dim, dim)
        image_proj[f"layers.{i}.1.3.weight"] = rand(dim, 4 * dim)
    return {"image_proj": image_proj, "ip_adapter": ip_layers(unet, width, generator)}


def tiny_clip_vision(folder: Path, seed: int = 0) -> Path:
    """A 2-layer CLIPVisionModelWithProjection (32² input, 8² patches, width 16, projection 24) saved in ``folder``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=CLIP_HIDDEN, intermediate_size=32,
                                  num_hidden_layers=2, num_attention_heads=2, projection_dim=CLIP_PROJECTION_DIM)
        CLIPVisionModelWithProjection(config).save_pretrained(folder, safe_serialization=True)
    return folder


def save_safetensors(state: dict[str, dict[str, torch.Tensor]], path: Path) -> Path:
    """The published .safetensors flattening: ``image_proj.*`` and ``ip_adapter.*`` keys."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{part}.{key}": value.contiguous() for part, sub in state.items() for key, value in sub.items()}, path)
    return path
