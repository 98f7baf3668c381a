"""One personalization's parameters and loss on a loaded prior: the token's embedding row (every method)
and, for the LoRA methods, a named UNet LoRA (``personal``), kept apart from any guidance's own.

The loss is the prior's denoising loss on the subject images. The camera is dropped (zeros), as the
toyworld prior saw it 10 % of the time in training: users' photos carry no poses, and a camera-free
subject word is what a camera-conditioned score distillation then reads from every view.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor

from dreamsmith.engine.personalize.config import PersonalizeConfig
from dreamsmith.guidance.lora import LoRAConditioner, add_lora, load_lora_state_dict, lora_state_dict
from dreamsmith.guidance.math import add_noise, alpha_sigma, dco_loss, denoising_error, prior_preservation_loss
from dreamsmith.guidance.textual_inversion import add_token, input_embeddings, word_embedding
from dreamsmith.guidance.training import GuidanceOptimConfig, GuidanceOptimizer

LORA_NAME = "personal"


class Personalizer:
    """The trainable token (and LoRA) of ``config`` on ``prior``, and one optimization step of them.

    images: ``[N, H, W, 3]`` subject images in [0, 1]; class_images: ``[M, H, W, 3]`` (dreambooth only).
    """

    def __init__(self, prior: Any, config: PersonalizeConfig, images: Tensor, class_images: Tensor | None = None):
        self.prior = prior
        self.config = config
        self.token_id = add_token(prior, config.token, word_embedding(prior, config.class_word))
        table = input_embeddings(prior).weight
        table.requires_grad_(True)
        row = torch.zeros(table.shape[0], 1, device=table.device)
        row[self.token_id] = 1.0
        table.register_hook(lambda grad: grad * row)  # only the new word's row learns; the others stay exact
        parameters = [table]
        if config.uses_lora:
            parameters += add_lora(prior.unet, LORA_NAME, rank=config.lora_rank, alpha=config.lora_rank)
        self.optimizer = GuidanceOptimizer(parameters, GuidanceOptimConfig(lr=config.lr, warmup_steps=0))
        with torch.no_grad():
            self.latents = prior.encode_images(images, sample=False).float()
            self.class_latents = None if class_images is None else prior.encode_images(class_images, sample=False)

    def conditioners(self, scale: float = 1.0) -> list[LoRAConditioner]:
        return [LoRAConditioner(LORA_NAME, scale)] if self.config.uses_lora else []

    def errors(self, latents: Tensor, prompts: list[str], generator: torch.Generator,
               with_reference: bool = False) -> tuple[Tensor, Tensor | None]:
        """Per-sample denoising errors ``[B]`` of the adapted model (and of the base: the adapter at scale 0,
        same noise, same text) on ``latents`` captioned ``prompts``."""
        prior = self.prior
        batch = latents.shape[0]
        device = generator.device
        t = torch.randint(0, prior.num_train_timesteps, (batch,), generator=generator, device=device).to(prior.device)
        noise = torch.randn(latents.shape, generator=generator, device=device).to(latents)
        alpha, sigma = alpha_sigma(prior.alphas_cumprod, t)
        z_t = add_noise(latents.float(), noise.float(), alpha, sigma)
        embeds = prior.encode_prompts(prompts, enable_grad=True)
        eps = prior.predict_noise(z_t, t, embeds, None, self.conditioners(), enable_grad=True)
        error = denoising_error(eps, noise)
        if not with_reference:
            return error, None
        eps_ref = prior.predict_noise(z_t, t, embeds.detach(), None, self.conditioners(0.0))
        return error, denoising_error(eps_ref, noise)

    def loss(self, generator: torch.Generator, pick: random.Random) -> Tensor:
        """The method's loss on one batch of subject images (and class images)."""
        config = self.config
        index = [pick.randrange(len(self.latents)) for _ in range(config.batch_size)]
        prompts = [pick.choice(config.instance_prompts()) for _ in index]
        error, error_ref = self.errors(self.latents[index], prompts, generator, with_reference=config.method == "dco")
        if config.method == "dco":
            return dco_loss(error, error_ref, config.dco_beta)
        if config.method == "dreambooth" and self.class_latents is not None and config.prior_weight:
            chosen = [pick.randrange(len(self.class_latents)) for _ in range(config.batch_size)]
            class_error, _ = self.errors(self.class_latents[chosen], [config.class_text()] * len(chosen), generator)
            return prior_preservation_loss(error, class_error, config.prior_weight)
        return error.mean()

    def step(self, generator: torch.Generator, pick: random.Random) -> float:
        loss = self.loss(generator, pick)
        self.optimizer.step(loss)
        return float(loss.detach())

    def embedding(self) -> Tensor:
        return input_embeddings(self.prior).weight[self.token_id].detach().float().cpu().clone()

    def state_dict(self) -> dict[str, Any]:
        state = {"embedding": self.embedding(), "optimizer": self.optimizer.state_dict()}
        if self.config.uses_lora:
            state["lora"] = lora_state_dict(self.prior.unet, LORA_NAME)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            input_embeddings(self.prior).weight[self.token_id] = state["embedding"]
        if self.config.uses_lora:
            load_lora_state_dict(self.prior.unet, LORA_NAME, state["lora"])
        self.optimizer.load_state_dict(state["optimizer"])
