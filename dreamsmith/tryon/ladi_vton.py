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

import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.textual_inversion import pseudo_words
from dreamsmith.tryon.garments import Garment
from dreamsmith.tryon.inpaint import InpaintingSource, InpaintInputs, garment_images

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


def _release_file(folder: Path, stem: str, allow_pickle: bool) -> dict[str, Tensor]:
    """The tensors of ``<stem>_<dataset>.safetensors`` (or, with ``allow_pickle``, ``.pth``) in ``folder``."""
    from dreamsmith.guidance.mvdream_convert import read_checkpoint

    files = sorted(folder.glob(f"{stem}_*.safetensors")) or sorted(folder.glob(f"{stem}_*.pth"))
    if not files:
        raise ModelLoadError(f"{folder} has no {stem}_<dataset>.safetensors or .pth (LaDI-VTON's release file)")
    return read_checkpoint(files[0], allow_pickle)


@dataclass
class LaDIVTON:
    """The loaded model: ``prior`` (SD 2 inpainting's VAE, text encoder and scheduler around the 31-channel
    UNet), the ``adapter`` and the CLIP ``image_encoder`` whose patch features it reads."""

    prior: Any
    adapter: InversionAdapter
    image_encoder: Any
    words: int = PSEUDO_WORDS

    @classmethod
    def load(cls, folder: Path, device: torch.device, allow_pickle: bool = False) -> LaDIVTON:
        """A folder holding SD 2 inpainting's pipeline (``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``,
        ``unet/config.json``), ``image_encoder`` (CLIP ViT-H/14 vision) and the release files
        ``unet_<dataset>`` and ``inversion_adapter_<dataset>``."""
        from diffusers import AutoencoderKL, DDIMScheduler
        from transformers import AutoTokenizer, CLIPTextModel, CLIPVisionModelWithProjection

        from dreamsmith.guidance.priors import DiffusionPrior

        for name in ("vae", "text_encoder", "tokenizer", "scheduler", "unet", "image_encoder"):
            if not (folder / name).is_dir():
                raise ModelLoadError(f"{folder} is not a LaDI-VTON model folder: it has no {name}/ (SD 2 "
                                     "inpainting's pipeline, image_encoder/ and the release files)")
        base_config = json.loads((folder / "unet" / "config.json").read_text())
        unet = extended_unet(base_config, _release_file(folder, "unet", allow_pickle))
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
        adapter = InversionAdapter.from_state_dict(_release_file(folder, "inversion_adapter", allow_pickle),
                                                   image_encoder.config)
        text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
        words, rest = divmod(adapter.layers[-1].out_features, int(text_encoder.config.hidden_size))
        if rest:
            raise ModelLoadError("the inversion adapter's output is not a whole number of text-encoder words")
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        for module in (unet, vae, text_encoder, image_encoder, adapter):
            module.to(device).eval().requires_grad_(False)
        prior = DiffusionPrior(unet, DDIMScheduler.from_pretrained(folder / "scheduler"), text_encoder,
                               AutoTokenizer.from_pretrained(folder / "tokenizer"), vae)
        return cls(prior, adapter, image_encoder, words)

    @torch.no_grad()
    def pseudo_words(self, garments: Tensor) -> Tensor:
        """``[G, words, width]`` of garment images ``[G, H, W, 3]`` in [0, 1] (CLIP-normalised at its size)."""
        from dreamsmith.tryon.idm_vton import clip_pixels

        hidden = self.image_encoder(clip_pixels(garments, self.image_encoder)).last_hidden_state
        return self.adapter(hidden).reshape(len(garments), self.words, -1)

    @torch.no_grad()
    def encode(self, prompts: list[str], words: Tensor | None) -> Tensor:
        """Text-encoder hidden states of ``prompts``, the marker tokens replaced by ``words [B, W, D]``."""
        tokenizer, encoder = self.prior.tokenizer, self.prior.text_encoder
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.prior.device)
        if words is None:
            return encoder(ids).last_hidden_state
        marker = tokenizer.convert_tokens_to_ids(MARKER + "</w>")
        with pseudo_words(encoder, ids, marker, words):
            return encoder(ids).last_hidden_state


class LaDIVTONSource(InpaintingSource):
    """Dresses views with LaDI-VTON: the garment's pseudo-words in the prompt, the garment laid on the view by
    the decal as its warped garment (LaDI-VTON warps it with a TPS network; here the mesh gives the warp), no
    pose heatmaps (zeros, the model's unconditional input: the mesh carries no skeleton). Several garments:
    their words follow each other in the prompt."""

    name = "ladi-vton"

    def __init__(self, model: LaDIVTON, garments: list[Garment], dresser: Any, category: str = "a garment",
                 steps: int = 30, guidance_scale: float = 7.5, chunk: int = 4, seed: int = 0) -> None:
        super().__init__(model.prior, garments, steps, guidance_scale, chunk, seed, dresser)
        self.model = model
        self.category = category

    def conditions(self, inputs: InpaintInputs) -> dict[str, Any]:
        prior, batch = self.prior, len(inputs.person)
        images = garment_images(self.garments, prior.image_size).to(prior.device, prior.dtype)
        words = self.model.pseudo_words(images).flatten(0, 1)[None]
        prompt = garment_prompt(self.category, words.shape[1])
        text = torch.cat([self.model.encode([""], None), self.model.encode([prompt], words)])
        pose_channels = int(prior.unet.config.in_channels) - 3 * prior.latent_channels - 1  # 18
        return {"text": text.repeat_interleave(batch, dim=0), "dressed": self.latents_of(inputs.dressed),
                "pose": inputs.masked.new_zeros(batch, pose_channels, *inputs.masked.shape[-2:])}

    def predict(self, latents: Tensor, timestep: Tensor, inputs: InpaintInputs, conditions: dict[str, Any]) -> Tensor:
        shared = torch.cat([latents, inputs.mask, inputs.masked, conditions["pose"]], dim=1)
        dressed = conditions["dressed"]
        sample = torch.cat([torch.cat([shared, torch.zeros_like(dressed)], dim=1), torch.cat([shared, dressed], 1)])
        return self.prior.unet(sample, timestep, encoder_hidden_states=conditions["text"]).sample
