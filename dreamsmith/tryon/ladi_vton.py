"""LaDI-VTON (Morelli et al. 2023): the garment as pseudo-words of the prompt (textual inversion).

The published weights (``miccunifi/ladi-vton`` release files, CC BY-NC 4.0: research only, never shipped
here) are PyTorch state dicts: ``inversion_adapter_<dataset>.pth`` (one CLIP vision encoder layer, a layer
norm on its first token and an MLP ``layers.0/3/6`` to ``16 x`` the text width) and ``unet_<dataset>.pth``
(Stable Diffusion 2 inpainting's UNet reading 31 channels: noisy latents, mask, masked image latents,
18 pose maps and the warped garment's latents). The garment's CLIP ViT-H patch features become 16 word
embeddings that replace the 16 marker tokens (``$``) of "a photo of a model wearing <category> $ $ ... $"
before the text encoder runs. Here the replacement is a forward hook on the text encoder's token
embedding, so the encoder itself runs unchanged; no code of the original is used.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn

from dreamsmith.errors import ModelLoadError

LICENCE = "CC BY-NC 4.0 (non-commercial; weights not shipped)"
PSEUDO_WORDS = 16
MARKER = "$"
UNET_CHANNELS = 31
"""Noisy latents 4 + mask 1 + masked image latents 4 + pose maps 18 + warped garment latents 4."""


class InversionAdapter(nn.Module):
    """Garment features ``[B, N, D]`` (a CLIP vision model's last hidden state) -> ``[B, words * width]``."""

    def __init__(self, vision_config: Any, output_dim: int, layers: int = 1) -> None:
        super().__init__()
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        width = int(vision_config.hidden_size)
        self.encoder_layers = nn.ModuleList(CLIPEncoderLayer(vision_config) for _ in range(layers))
        self.post_layernorm = nn.LayerNorm(width, eps=vision_config.layer_norm_eps)
        self.layers = nn.Sequential(nn.Linear(width, width * 4), nn.GELU(), nn.Dropout(0.5),
                                    nn.Linear(width * 4, width * 4), nn.GELU(), nn.Dropout(0.5),
                                    nn.Linear(width * 4, output_dim))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], vision_config: Any) -> InversionAdapter:
        """The adapter of published weights (``encoder_layers.*``, ``post_layernorm.*``, ``layers.{0,3,6}.*``)."""
        layers = len({key.split(".")[1] for key in state if key.startswith("encoder_layers.")})
        if "layers.6.weight" not in state or not layers:
            raise ModelLoadError("not LaDI-VTON's inversion adapter (no encoder_layers.* or layers.6.weight)")
        module = cls(vision_config, state["layers.6.weight"].shape[0], layers)
        missing, unexpected = module.load_state_dict(dict(state), strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"the inversion adapter's weights do not fit ({missing[:1]} missing, "
                                 f"{unexpected[:1]} unexpected)")
        return module.eval()

    def forward(self, features: Tensor) -> Tensor:
        hidden = features
        for layer in self.encoder_layers:
            # transformers 4 takes a causal mask too, 5 does not: none either way (the vision side is not causal)
            causal = "causal_attention_mask" in inspect.signature(layer.forward).parameters
            output = layer(hidden, None, None) if causal else layer(hidden, None)
            hidden = output[0] if isinstance(output, tuple) else output
        return self.layers(self.post_layernorm(hidden[:, 0]))


def garment_prompt(category: str, words: int = PSEUDO_WORDS, marker: str = MARKER) -> str:
    """LaDI-VTON's prompt with ``words`` marker tokens for the garment's pseudo-words."""
    return f"a photo of a model wearing {category} {' '.join([marker] * words)}"


@contextlib.contextmanager
def pseudo_words(text_encoder: Any, input_ids: Tensor, marker_id: int, words: Tensor) -> Iterator[None]:
    """While active, the text encoder's token embedding gives ``words [B, W, D]`` at the first ``W`` marker
    tokens of each row of ``input_ids [B, L]`` (the row's other tokens as before)."""
    positions = input_ids == marker_id
    if (positions.sum(1) < words.shape[1]).any():
        raise ValueError(f"every prompt needs {words.shape[1]} marker tokens for the garment's pseudo-words")
    first = positions & (positions.cumsum(1) <= words.shape[1])

    def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        if output.shape[:2] != input_ids.shape:
            return output
        return output.masked_scatter(first.unsqueeze(-1).to(output.device), words.to(output))

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def extended_unet(base_config: Mapping[str, Any], state: Mapping[str, Tensor]) -> Any:
    """The try-on UNet: SD 2 inpainting's config with 31 input channels, loaded from ``unet_<dataset>.pth``."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel.from_config({**config, "in_channels": UNET_CHANNELS})
    missing, unexpected = unet.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"LaDI-VTON's UNet weights do not fit SD 2 inpainting with {UNET_CHANNELS} input "
                             f"channels ({missing[:1]} missing, {unexpected[:1]} unexpected)")
    return unet
