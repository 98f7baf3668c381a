"""Diffusion priors: any diffusers text-to-image model behind one interface.

A frozen :class:`DiffusionPrior` (made by :func:`dreamsmith.guidance.loading.load_prior`): text in,
ε out, with the scheduler's ᾱ_t, the prediction type (ε or v) and latent vs pixel space.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.conditioners import (
    ConditionContext,
    Conditioner,
    all_applied,
    merge_unet_kwargs,
    tile_to_batch,
)
from dreamsmith.guidance.math import alpha_sigma, eps_from_v
from dreamsmith.guidance.multiview import MultiViewConditioner, model_conditioners
from dreamsmith.guidance.mvdream_camera import mvdream_camera_labels
from dreamsmith.guidance.textual_inversion import expand_tokens
from dreamsmith.prompt_images import substitute_images
from dreamsmith.renderers.cameras import Cameras

METADATA_FILE = "dreamsmith.json"
CAMERA_CONDITIONINGS = ("c2w16", "c2w16+rays", "mvdream")
"""How a camera-conditioned model reads its camera: "c2w16" as class labels only; "c2w16+rays" also as
six Plücker ray channels (:meth:`Cameras.plucker_map`) after the image's own input channels; "mvdream"
as class labels in MVDream's frame with unit-length translation (:mod:`dreamsmith.guidance.mvdream_camera`)."""
RAY_CHANNELS = 6
_UNET_RESERVED = ("sample", "timestep", "encoder_hidden_states", "class_labels", "return_dict")


def c2w16_labels(c2w: Tensor, camera_distance: float) -> Tensor:
    """Camera class labels ``[B, 16]``: c2w ``[B, 4, 4]`` flattened row-major, with its translation
    column divided by ``camera_distance`` (so training-distance cameras have unit-norm positions)."""
    c2w = c2w.clone()
    c2w[:, :3, 3] = c2w[:, :3, 3] / camera_distance
    return c2w.reshape(-1, 16)


class DiffusionPrior:
    """A frozen diffusers model: text encoder + tokenizer, UNet, scheduler, and a VAE for latent models.

    Attributes: ``alphas_cumprod`` (fp32, on ``device``), ``num_train_timesteps``, ``prediction_type``
    ("epsilon" or "v_prediction"), ``is_latent``, ``image_size`` (pixels the model expects),
    ``latent_channels`` (channels of z), ``metadata`` (the folder's ``dreamsmith.json``, or {}),
    ``known_prompts`` (list or None), ``camera_conditioning`` (one of ``CAMERA_CONDITIONINGS`` or None),
    ``views_per_group`` (views of one object the model denoises together: 1, or F for a multi-view model
    whose ``dreamsmith.json`` names ``"attention": "multiview"``; its multi-view attention is part of
    every call), ``image_channels`` (input channels after z_t and any ray channels that carry a source
    image, InstructPix2Pix's image latents: the UNet's extra inputs for a latent model, ``dreamsmith.json``
    ``"image_channels"`` for a pixel model; 0 for a text-only model).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        vae: torch.nn.Module | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.metadata = dict(metadata or {})
        self.device = unet.device
        self.dtype = unet.dtype
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ModelLoadError(
                f"scheduler {type(scheduler).__name__} has no alphas_cumprod; "
                "use a DDPM-type scheduler (DDPM, DDIM, PNDM, Euler)"
            )
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).to(self.device)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelLoadError(
                f"prediction_type {self.prediction_type!r} is not supported; "
                "dreamsmith distils ε- or v-prediction models"
            )
        self.is_latent = vae is not None
        unet_size = _as_int(unet.config.sample_size)
        if self.is_latent:
            vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.image_size = unet_size * vae_scale_factor  # diffusers pipelines' default size
            self.latent_channels = int(vae.config.latent_channels)
        self.known_prompts: list[str] | None = self.metadata.get("known_prompts")
        self.prompt_images: dict[str, str] = {}  # <image:REF> -> its tokens (multimodal_prompt.add_image_words)
        self.token_expansions: dict[str, str] = {}  # multi-vector token -> its words (textual_inversion)
        self.prompt_rewrites: dict[str, Callable[[str], str]] = {}  # e.g. PhotoMaker's trigger word, by name
        self.camera_conditioning: str | None = self.metadata.get("camera_conditioning")
        if self.camera_conditioning not in (None, *CAMERA_CONDITIONINGS):
            raise ModelLoadError(
                f"{METADATA_FILE}: unknown camera_conditioning {self.camera_conditioning!r}; "
                f"supported: {', '.join(CAMERA_CONDITIONINGS)}"
            )
        self.ray_channels = RAY_CHANNELS if self.camera_conditioning == "c2w16+rays" else 0
        in_channels = int(unet.config.in_channels)
        if self.is_latent:
            self.image_channels = in_channels - self.latent_channels - self.ray_channels
            if self.image_channels < 0:
                raise ModelLoadError(f"the UNet reads {in_channels} input channels, fewer than the VAE's "
                                     f"{self.latent_channels} latent channels")
        else:
            self.image_size = unet_size
            self.image_channels = int(self.metadata.get("image_channels", 0))
            self.latent_channels = in_channels - self.ray_channels - self.image_channels
            if self.latent_channels < 1:
                raise ModelLoadError(
                    f"{METADATA_FILE}: camera_conditioning {self.camera_conditioning!r} needs "
                    f"{self.ray_channels} ray input channels and image_channels {self.image_channels} beside the "
                    f"image's, but the UNet reads {in_channels}"
                )
        self.camera_distance = float(self.metadata.get("camera_distance", 1.0))
        self.model_conditioners = model_conditioners(self.metadata, METADATA_FILE)
        self.views_per_group = next(
            (c.views for c in self.model_conditioners if isinstance(c, MultiViewConditioner)), 1)

    def max_prompt_tokens(self) -> int:
        """How many tokens of a prompt the text encoder reads."""
        max_length = self.tokenizer.model_max_length
        if max_length > 4096:  # tokenizers without a configured limit report a huge sentinel
            max_length = getattr(self.text_encoder.config, "max_position_embeddings", 77)
        return int(max_length)

    def prompt_tokens(self, prompt: str) -> tuple[int, int]:
        """(tokens in ``prompt`` with the special ones, tokens the encoder reads)."""
        return len(self.tokenizer(self.prompt_text(prompt), truncation=False).input_ids), self.max_prompt_tokens()

    def prompt_text(self, prompt: str) -> str:
        """The text the tokenizer reads for ``prompt``: its image placeholders written as their words, multi-vector
        tokens as theirs, then the conditioners' rewrites (:mod:`dreamsmith.guidance.photomaker` removes its trigger
        word)."""
        prompt = expand_tokens(substitute_images(prompt, self.prompt_images), self.token_expansions)
        for rewrite in self.prompt_rewrites.values():
            prompt = rewrite(prompt)
        return prompt

    def encode_prompts(self, prompts: list[str], enable_grad: bool = False) -> Tensor:
        """Text embeddings ``[B, L, D]`` (the encoder's last hidden state), padded to the tokenizer's
        max length; a prompt's ``<image:REF>`` placeholders are written as their aligned words' tokens first
        (:mod:`dreamsmith.guidance.multimodal_prompt`). CLIP encoders see no attention mask (as Stable Diffusion
        was trained); others (T5 in DeepFloyd IF) get one. Runs under no_grad unless ``enable_grad`` (Textual
        Inversion trains a token's embedding through the encoder)."""
        with torch.set_grad_enabled(enable_grad):
            return self._encode_prompts(prompts)

    def _encode_prompts(self, prompts: list[str]) -> Tensor:
        max_length = self.max_prompt_tokens()
        texts = [self.prompt_text(prompt) for prompt in prompts]
        tokens = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                                return_tensors="pt")
        config = self.text_encoder.config
        use_mask = getattr(config, "use_attention_mask", None)
        if use_mask is None:
            use_mask = not str(getattr(config, "model_type", "")).startswith("clip")
        attention_mask = tokens.attention_mask.to(self.device) if use_mask else None
        output = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=attention_mask)
        return output.last_hidden_state.to(self.dtype)

    def encode_images(
        self, rgb: Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        """z ``[B, latent_channels, h, w]`` of images ``rgb [B, H, W, 3]`` in [0, 1], differentiable.

        Images are resized (bilinear) to ``image_size``. Latent models: a draw (``sample=True``, from
        ``generator``) or the mean of the VAE posterior of 2x − 1, times the VAE's scaling factor.
        Pixel models: 2x − 1.
        """
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        x = (2 * x - 1).to(device=self.device, dtype=self.dtype)
        if not self.is_latent:
            return x
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator) if sample else posterior.mean
        return (z - self._vae_shift) * self.vae.config.scaling_factor

    def decode_latents(self, z: Tensor) -> Tensor:
        """Images ``[B, H, W, 3]`` float32 in [0, 1] from z (the inverse of :meth:`encode_images`)."""
        z = z.to(device=self.device, dtype=self.dtype)
        x = (
            self.vae.decode(z / self.vae.config.scaling_factor + self._vae_shift).sample
            if self.is_latent
            else z
        )
        return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    @property
    def _vae_shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    family = "sd"
    """What the UNet expects besides text tokens: "sd" (nothing), "sdxl" / "sdxl-refiner" (pooled text
    and added time ids, :class:`dreamsmith.guidance.sdxl.SDXLPrior`)."""

    @property
    def latent_space(self) -> tuple[bool, int, float, float]:
        """What makes two models' z interchangeable: latent or pixel, channels, the VAE's scale and shift
        (SD's VAE scales by 0.18215, SDXL's by 0.13025: same channels, different spaces)."""
        if not self.is_latent:
            return (False, self.latent_channels, 1.0, 0.0)
        return (True, self.latent_channels, float(self.vae.config.scaling_factor), float(self._vae_shift))

    @property
    def latent_space_name(self) -> str:
        latent, channels, scale, _ = self.latent_space
        return f"{channels} latent channels scaled by {scale:g}" if latent else f"{channels} pixel channels"

    def text_condition(self, embeds: Tensor) -> tuple[Tensor, dict[str, Any]]:
        """The UNet's ``encoder_hidden_states`` and any further text kwargs from ``embeds`` as
        :meth:`encode_prompts` made them (here: the embeddings themselves, nothing else)."""
        return embeds, {}

    def camera_labels(self, cameras: Cameras | None, batch: int) -> Tensor | None:
        """The UNet's ``class_labels`` ``[batch, 16]`` for camera-conditioned models (zeros without
        cameras, i.e. camera dropped); None for models without camera conditioning."""
        if self.camera_conditioning is None:
            return None
        if cameras is None:
            return torch.zeros(batch, 16, device=self.device, dtype=self.dtype)
        c2w = cameras.c2w.to(device=self.device, dtype=torch.float32)
        if self.camera_conditioning == "mvdream":
            labels = mvdream_camera_labels(c2w)
        else:
            labels = c2w16_labels(c2w, self.camera_distance)
        return tile_to_batch(labels, batch).to(self.dtype)

    def camera_rays(self, cameras: Cameras | None, sample: Tensor) -> Tensor | None:
        """The ray channels ``[B, 6, h, w]`` a "c2w16+rays" model reads after ``sample [B, C, h, w]``
        (zeros without cameras: camera dropped); None for other models."""
        if not self.ray_channels:
            return None
        batch, _, height, width = sample.shape
        if cameras is None:
            return sample.new_zeros(batch, self.ray_channels, height, width)
        rays = cameras.to(self.device).with_resolution(height, width).plucker_map(self.camera_distance)
        return tile_to_batch(rays, batch).to(sample)

    def predict_noise(
        self,
        z_t: Tensor,
        t: Tensor | int,
        text_embeds: Tensor,
        cameras: Cameras | None = None,
        conditioners: Sequence[Conditioner] = (),
        context: ConditionContext | None = None,
        enable_grad: bool = False,
    ) -> Tensor:
        """ε̂(z_t; y, t) ``[B, C, h, w]`` in z_t's dtype, whatever the model predicts.

        z_t: ``[B, C, h, w]``; t: ``[B]`` or a scalar; text_embeds: ``[B, L, D]`` or ``[n, L, D]``
        with n dividing B (tiled); cameras: ``n`` cameras, n dividing B (tiled: e.g. both CFG halves),
        used by camera-conditioned models and ignored by others; conditioners: hooks applied in
        order (DESIGN.md "Diffusion priors"); context: what conditioners read. v-predictions are
        converted with the scheduler's α_t, σ_t; learned-variance outputs (DeepFloyd IF) are cut to
        ε. Runs under no_grad unless ``enable_grad``. The model's own conditioners (its multi-view
        attention) come first.
        """
        conditioners = [*self.model_conditioners, *conditioners]
        batch = z_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(batch)
        sample = z_t.to(device=self.device, dtype=self.dtype)
        embeds = tile_to_batch(text_embeds.to(device=self.device, dtype=self.dtype), batch)
        embeds, text_kwargs = self.text_condition(embeds)
        class_labels = self.camera_labels(cameras, batch)
        context = context or ConditionContext()
        context = dataclasses.replace(
            context,
            cameras=cameras if context.cameras is None else context.cameras,
            image_size=self.image_size,
            class_labels=class_labels,
            timesteps=t,
            added_cond_kwargs=text_kwargs.get("added_cond_kwargs"),
        )
        input_grad = any(c.wants_input_grad(context) for c in conditioners)
        leaf = sample.detach().requires_grad_(True) if input_grad else sample  # z_t, for ∇_{z_t} of energies
        sample = leaf
        rays = self.camera_rays(cameras, sample)
        if rays is not None:
            sample = torch.cat([sample, rays], dim=1)
        with torch.set_grad_enabled(enable_grad or input_grad):
            deltas = [d for d in (c.time_embedding_delta(context, batch) for c in conditioners) if d is not None]
            delta = torch.stack(deltas).sum(0) if deltas else None
            with all_applied(conditioners, self.unet, context, delta):
                for conditioner in conditioners:
                    embeds = conditioner.transform_prompt_embeds(embeds, context)
                extra = [conditioner.extra_input_channels(sample, context) for conditioner in conditioners]
                extra = [channels.to(sample) for channels in extra if channels is not None]
                if extra:
                    sample = torch.cat([sample, *extra], dim=1)
                contributions = [conditioner.unet_kwargs(sample, t, embeds, context) for conditioner in conditioners]
                kwargs = merge_unet_kwargs([text_kwargs, *contributions], reserved=_UNET_RESERVED)
                output = self.unet(
                    sample, t, encoder_hidden_states=embeds, class_labels=class_labels, return_dict=False, **kwargs
                )[0]
            output = output[:, : z_t.shape[1]].float()  # learned-variance models also output a variance
            if self.prediction_type == "v_prediction":
                alpha, sigma = alpha_sigma(self.alphas_cumprod, t)
                output = eps_from_v(output, z_t.to(device=self.device, dtype=torch.float32), alpha, sigma)
            if input_grad:
                corrections = [c.noise_correction(leaf, context) for c in conditioners]
                output = sum((d.float() for d in corrections if d is not None), output)
                output = output if enable_grad else output.detach()
        return output.to(z_t.dtype)


def _as_int(size: int | Sequence[int]) -> int:
    return int(size if isinstance(size, int) else size[0])
