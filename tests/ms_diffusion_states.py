"""Synthetic MS-Diffusion checkpoints in the published layout (``ms_adapter.bin``), written from the published key
list (MS-Diffusion's ``Resampler`` with latent_init_mode='grounding', ``MSAdapter.save_to_checkpoint``) rather than
from our modules, so loading them tests the layout."""

from __future__ import annotations

import torch
from conftest import TEXT_DIM
from ip_adapter_states import CLIP_HIDDEN, ip_layers


def ms_state(unet: torch.nn.Module, embed_dim: int = CLIP_HIDDEN, dim: int = 32, queries: int = 3, depth: int = 2,
             phrase_dim: int = TEXT_DIM, seed: int = 0) -> dict:
    """A checkpoint in ms_adapter.bin's layout, written from the published key list (MS-Diffusion's Resampler with
    latent_init_mode='grounding', 64-wide heads, 8 Fourier frequencies; MSAdapter.save_to_checkpoint)."""
    generator = torch.Generator().manual_seed(seed)
    width = int(unet.config.cross_attention_dim)
    grounding = phrase_dim + 8 * 2 * 4

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    proj = {"grounding_latents": rand(1, queries, dim),
            "latent_proj.0.weight": rand(2 * grounding, grounding), "latent_proj.0.bias": rand(2 * grounding),
            "latent_proj.2.weight": rand(dim * queries, 2 * grounding), "latent_proj.2.bias": rand(dim * queries),
            "latent_norm.weight": 1 + rand(dim), "latent_norm.bias": rand(dim),
            "proj_in.weight": rand(dim, embed_dim), "proj_in.bias": rand(dim),
            "attention_norm.weight": 1 + rand(dim), "attention_norm.bias": rand(dim),
            "proj_out.weight": rand(width, dim), "proj_out.bias": rand(width),
            "norm_out.weight": 1 + rand(width), "norm_out.bias": rand(width)}
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            proj[f"layers.{i}.0.{norm}.weight"] = 1 + rand(dim)
            proj[f"layers.{i}.0.{norm}.bias"] = rand(dim)
        proj[f"layers.{i}.0.to_q.weight"] = rand(64, dim)
        proj[f"layers.{i}.0.to_kv.weight"] = rand(128, dim)
        proj[f"layers.{i}.0.to_out.weight"] = rand(dim, 64)
        proj[f"layers.{i}.1.0.weight"] = 1 + rand(dim)
        proj[f"layers.{i}.1.0.bias"] = rand(dim)
        proj[f"layers.{i}.1.1.weight"] = rand(4 * dim, dim)
        proj[f"layers.{i}.1.3.weight"] = rand(dim, 4 * dim)
    return {"image_proj": proj, "ms_adapter": ip_layers(unet, width, generator),
            "dummy_image_tokens": rand(1, 4, width)}


def save_ms_safetensors(state: dict, path):
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{part}.{key}": value for part in ("image_proj", "ms_adapter") for key, value in state[part].items()}
    save_file({**flat, "dummy_image_tokens": state["dummy_image_tokens"]}, path)
    return path
