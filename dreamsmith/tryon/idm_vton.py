"""IDM-VTON (Choi et al. 2024) as a texture source: an SDXL inpainting try-on UNet dressing each view.

The published model folder (``yisol/IDM-VTON``, CC BY-NC-SA 4.0: research only, never shipped here) holds
``unet`` (the TryonNet: 13 input channels, the noisy latents, the inpainting mask, the masked image's
latents and a DensePose image's latents; an IP-Adapter-plus resampler as ``encoder_hid_proj.*`` and image
keys/values as ``<attn2>.processor.to_k_ip/to_v_ip``), ``unet_encoder`` (the GarmentNet, an SDXL UNet run
on the garment's latents whose self-attention tokens join the TryonNet's), ``image_encoder`` (CLIP ViT-H)
and SDXL's ``vae``, ``text_encoder(_2)``, ``tokenizer(_2)`` and ``scheduler``. Loaded into diffusers'
``UNet2DConditionModel`` with this project's attention hooks (:mod:`dreamsmith.tryon.image_prompt`,
:mod:`dreamsmith.tryon.reference_attention`); no code of the original is used.

As a texture source the person photo is a render of the mesh, the mask its region, and the pose image is
rendered exactly from the mesh, not estimated: its DensePose-style part image where the mesh carries a body-part
labelling (:mod:`dreamsmith.tryon.body_parts`), else its normals.
Several garments: their image tokens and GarmentNet tokens are concatenated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.attention import hooks_active
from dreamsmith.tryon.garments import Garment
from dreamsmith.tryon.image_prompt import ImagePromptAttention, ImagePromptWeights, Resampler
from dreamsmith.tryon.inpaint import InpaintingSource, InpaintInputs, garment_images
from dreamsmith.tryon.reference_attention import JoinReferenceAttention, RecordSelfAttention

LICENCE = "CC BY-NC-SA 4.0 (non-commercial; weights not shipped)"
CONFIG_KEYS_OF_THE_ORIGINAL = ("encoder_hid_dim_type", "encoder_hid_dim", "_class_name", "_diffusers_version")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _unet_weights(folder: Path, allow_pickle: bool) -> dict[str, Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        return {key: value for file in files for key, value in load_file(file).items()}
    pickles = sorted(folder.glob("*.bin"))
    if pickles and allow_pickle:
        return {key: value for file in pickles for key, value in torch.load(file, weights_only=True).items()}
    raise ModelLoadError(f"{folder} has no .safetensors weights" + (" (only pickled .bin: pass --allow-pickle if "
                                                                     "you trust them)" if pickles else ""))


def load_unet(folder: Path, allow_pickle: bool = False) -> tuple[Any, ImagePromptWeights | None, Resampler | None]:
    """A UNet folder in IDM-VTON's layout: the diffusers UNet, its image-prompt weights and its resampler
    (None for what the folder lacks)."""
    from diffusers import UNet2DConditionModel

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder} is not a UNet folder (no config.json)")
    config = {k: v for k, v in json.loads(config_file.read_text()).items() if k not in CONFIG_KEYS_OF_THE_ORIGINAL}
    unet = UNet2DConditionModel.from_config(config)
    state = _unet_weights(folder, allow_pickle)
    projection = {key.removeprefix("encoder_hid_proj."): value for key, value in state.items()
                  if key.startswith("encoder_hid_proj.")}
    image_prompt, rest = ImagePromptWeights.split_from({k: v for k, v in state.items()
                                                        if not k.startswith("encoder_hid_proj.")})
    missing, unexpected = unet.load_state_dict(rest, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{folder}'s weights do not fit its config ({len(missing)} missing, e.g. "
                             f"{missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})")
    return unet, image_prompt, Resampler.from_state_dict(projection) if projection else None


def clip_pixels(images: Tensor, image_encoder: Any) -> Tensor:
    """Images ``[B, H, W, 3]`` in [0, 1] as a CLIP vision model reads them: resized (bicubic) to its size and
    normalised by CLIP's mean and deviation, ``[B, 3, S, S]``."""
    size = int(image_encoder.config.image_size)
    pixels = F.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean) / std


@dataclass
class IDMVTON:
    """The loaded model: ``prior`` (an :class:`~dreamsmith.guidance.sdxl.SDXLPrior` over the TryonNet, for its
    text encoders, VAE and scheduler), ``garment_unet``, ``image_encoder``, ``image_prompt`` and ``resampler``."""

    prior: Any
    garment_unet: Any
    image_encoder: Any
    image_prompt: ImagePromptWeights
    resampler: Resampler

    @property
    def unet(self) -> Any:
        return self.prior.unet

    @classmethod
    def load(cls, folder: Path, device: torch.device, allow_pickle: bool = False) -> IDMVTON:
        from diffusers import AutoencoderKL, DDIMScheduler
        from transformers import (
            AutoTokenizer,
            CLIPTextModel,
            CLIPTextModelWithProjection,
            CLIPVisionModelWithProjection,
        )

        from dreamsmith.guidance.sdxl import SDXLPrior

        for name in ("unet", "unet_encoder", "image_encoder", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                     "tokenizer_2", "scheduler"):
            if not (folder / name).is_dir():
                raise ModelLoadError(f"{folder} is not an IDM-VTON model folder: it has no {name}/ (expected "
                                     "yisol/IDM-VTON's layout)")
        unet, image_prompt, resampler = load_unet(folder / "unet", allow_pickle)
        if image_prompt is None or resampler is None:
            raise ModelLoadError(f"{folder}/unet has no image-prompt weights (to_k_ip/to_v_ip, encoder_hid_proj)")
        garment_unet, _, _ = load_unet(folder / "unet_encoder", allow_pickle)
        encoders = [(AutoTokenizer.from_pretrained(folder / "tokenizer"),
                     CLIPTextModel.from_pretrained(folder / "text_encoder")),
                    (AutoTokenizer.from_pretrained(folder / "tokenizer_2"),
                     CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"))]
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        vae = AutoencoderKL.from_pretrained(folder / "vae")
        modules = [unet, garment_unet, vae, image_prompt, resampler] + [encoder for _, encoder in encoders]
        for module in modules:
            module.to(device).eval().requires_grad_(False)
        prior = SDXLPrior(unet, scheduler, encoders, vae)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder").to(device).eval()
        return cls(prior, garment_unet, image_encoder, image_prompt, resampler)

    @torch.no_grad()
    def image_tokens(self, garments: Tensor) -> Tensor:
        """The resampled image tokens ``[G, T, D]`` of garment images ``[G, H, W, 3]`` in [0, 1]."""
        hidden = self.image_encoder(clip_pixels(garments, self.image_encoder), output_hidden_states=True)
        return self.resampler(hidden.hidden_states[-2])

    def tryon_unet(self, sample: Tensor, timestep: Tensor, text: Tensor, added: dict[str, Any], image_tokens: Tensor,
                   references: list[dict[str, Tensor]]) -> Tensor:
        """The TryonNet's prediction for ``sample [B, 13, h, w]`` with the garment's image tokens ``[B, T, D]``
        and GarmentNet tokens (one ``{module: tokens}`` per garment)."""
        hooks = [ImagePromptAttention(self.image_prompt, image_tokens), JoinReferenceAttention(references)]
        with hooks_active(self.unet, hooks):
            return self.unet(sample, timestep, encoder_hidden_states=text, **added).sample

    def garment_tokens(self, garment_latents: Tensor, timestep: Tensor, text: Tensor) -> dict[str, Tensor]:
        """The GarmentNet's self-attention input tokens per module for garment latents ``[1, 4, h, w]``."""
        recorder = RecordSelfAttention()
        config = self.garment_unet.config
        added = {}
        if config.addition_embed_type == "text_time":
            _, added = self.prior.text_condition(text)
        with hooks_active(self.garment_unet, [recorder]):
            self.garment_unet(garment_latents, timestep, encoder_hidden_states=text[:, :-1], **added)
        return recorder.features


class IDMVTONSource(InpaintingSource):
    """Dresses views with IDM-VTON (see the module doc): ``steps`` DDIM steps at ``guidance_scale`` (2, as the
    original's demo), no garment in the unconditional half (zero GarmentNet tokens, a blank image's tokens)."""

    name = "idm-vton"

    def __init__(self, model: IDMVTON, garments: list[Garment], description: str = "a garment", steps: int = 30,
                 guidance_scale: float = 2.0, chunk: int = 4, seed: int = 0) -> None:
        super().__init__(model.prior, garments, steps, guidance_scale, chunk, seed)
        self.model = model
        self.description = description

    def conditions(self, inputs: InpaintInputs) -> dict[str, Any]:
        model, prior = self.model, self.prior
        batch = len(inputs.person)
        images = garment_images(self.garments, prior.image_size).to(prior.device, prior.dtype)
        tokens = model.image_tokens(images).flatten(0, 1)[None]  # several garments side by side
        empty = model.image_tokens(torch.zeros_like(images)).flatten(0, 1)[None]
        text = prior.encode_prompts(["", f"model is wearing {self.description}"])
        embeds, added = prior.text_condition(text.repeat_interleave(batch, dim=0))
        return {"garments": self.latents_of(images.permute(0, 3, 1, 2)),
                "garment_text": prior.encode_prompts([f"a photo of {self.description}"]),
                "pose": self.latents_of(inputs.pose), "embeds": embeds, "added": added,
                "tokens": torch.cat([empty.expand(batch, -1, -1), tokens.expand(batch, -1, -1)])}

    def predict(self, latents: Tensor, timestep: Tensor, inputs: InpaintInputs, conditions: dict[str, Any]) -> Tensor:
        batch = len(latents)
        references = []
        for garment in conditions["garments"]:
            own = self.model.garment_tokens(garment[None], timestep, conditions["garment_text"])
            references.append({name: torch.cat([torch.zeros_like(t), t]).repeat_interleave(batch, dim=0)
                               for name, t in own.items()})  # no garment in the unconditional half
        sample = torch.cat([latents, inputs.mask, inputs.masked, conditions["pose"]], dim=1).repeat(2, 1, 1, 1)
        return self.model.tryon_unet(sample, timestep, conditions["embeds"], conditions["added"],
                                     conditions["tokens"], references)
