"""The SDXL family behind the :class:`DiffusionPrior` interface: SDXL base (two text encoders) and the
SDXL refiner (the second encoder only), whose UNets also read a pooled text embedding and "added
time ids" (``added_cond_kwargs``).

Text embeddings travel through the guidance code as one tensor, as for every prior: the two encoders'
penultimate hidden states side by side ``[B, L, D1 + D2]`` (``[B, L, D2]`` for the refiner), with one
more row holding the second encoder's pooled, projected embedding (zero-padded to the width). CFG
tiling, prompt caches and checkpoints treat it like any embedding; :meth:`SDXLPrior.text_condition`
splits the row off again before the UNet call, so conditioners see the plain ``[B, L, D]``.

Added time ids, as SDXL was trained: base ``(h, w, crop_top, crop_left, target_h, target_w)`` =
``(S, S, 0, 0, S, S)`` at the model's image size S; refiner ``(S, S, 0, 0, aesthetic_score)`` with
the score 6.0 (the diffusers refiner pipeline's default for the prompt; it gives 2.5 to the negative
prompt, which a distillation step's unconditional branch does not separate here: every branch gets 6.0).
Empty prompts become zero embeddings when the folder's ``force_zeros_for_empty_prompt`` says so (SDXL
base), as its pipelines do for an empty negative prompt.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.priors import DiffusionPrior

AESTHETIC_SCORE = 6.0
BASE_TIME_IDS = 6
REFINER_TIME_IDS = 5


class SDXLPrior(DiffusionPrior):
    """An SDXL base or refiner model. ``encoders``: (tokenizer, text encoder) pairs in the order their
    hidden states are concatenated; the last one must have a projection (``text_embeds``)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        encoders: list[tuple[Any, torch.nn.Module]],
        vae: torch.nn.Module | None,
        metadata: dict[str, Any] | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        tokenizer, text_encoder = encoders[0]
        super().__init__(unet, scheduler, text_encoder, tokenizer, vae=vae, metadata=metadata)
        self.encoders = encoders
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        config = unet.config
        if not hasattr(encoders[-1][1], "text_projection"):
            raise ModelLoadError("an SDXL pipeline's last text encoder must give a pooled, projected embedding "
                                 f"(CLIPTextModelWithProjection), not {type(encoders[-1][1]).__name__}")
        self.pooled_dim = int(encoders[-1][1].config.projection_dim)
        width = sum(int(encoder.config.hidden_size) for _, encoder in encoders)
        if config.cross_attention_dim != width:
            raise ModelLoadError(f"the SDXL UNet attends to {config.cross_attention_dim}-wide text, but its text "
                                 f"encoders give {width}")
        n_ids, rest = divmod(int(config.projection_class_embeddings_input_dim) - self.pooled_dim,
                             int(config.addition_time_embed_dim))
        if rest or n_ids not in (BASE_TIME_IDS, REFINER_TIME_IDS) or not 0 < self.pooled_dim <= width:
            raise ModelLoadError(
                f"the UNet's added embedding ({config.projection_class_embeddings_input_dim} inputs) fits neither SDXL "
                f"base nor refiner with a {self.pooled_dim}-wide pooled text embedding"
            )
        self.family = "sdxl" if n_ids == BASE_TIME_IDS else "sdxl-refiner"
        self.aesthetic_score = float(self.metadata.get("aesthetic_score", AESTHETIC_SCORE))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """``[B, L + 1, D]``: the encoders' penultimate hidden states side by side, then the pooled row."""
        max_length = self.max_prompt_tokens()
        hidden, texts = [], [self.prompt_text(prompt) for prompt in prompts]
        for tokenizer, encoder in self.encoders:
            ids = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                            return_tensors="pt").input_ids.to(self.device)
            output = encoder(input_ids=ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        pooled = output.text_embeds  # the last encoder's (checked to have a projection when loaded)
        embeds = torch.cat(hidden, dim=-1)
        row = torch.nn.functional.pad(pooled, (0, embeds.shape[-1] - pooled.shape[-1]))
        packed = torch.cat([embeds, row[:, None]], dim=1)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([prompt == "" for prompt in prompts], device=packed.device)
            packed = torch.where(empty[:, None, None], torch.zeros_like(packed), packed)
        return packed.to(self.dtype)

    def text_condition(self, embeds: Tensor) -> tuple[Tensor, dict[str, Any]]:
        pooled = embeds[:, -1, : self.pooled_dim]
        return embeds[:, :-1], {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": self.time_ids(len(embeds))}}

    def time_ids(self, batch: int) -> Tensor:
        """The added time ids ``[batch, 6]`` (base) or ``[batch, 5]`` (refiner)."""
        size = float(self.image_size)
        last = [size, size] if self.family == "sdxl" else [self.aesthetic_score]
        ids = torch.tensor([size, size, 0.0, 0.0, *last], device=self.device, dtype=self.dtype)
        return ids.expand(batch, -1)
