"""StyleAligned (Hertz et al. 2023, "Style Aligned Image Generation via Shared Attention", Sec. 3) as a conditioner:
every self-attention of the asset's call also attends to a reference image's keys and values.

Each model call runs twice: first on the reference, its latent z_ref noised to each sample's own t,
z_ref,t = α_t z_ref + σ_t ε_ref (ε_ref shared by every sample of a step, drawn from ``seed`` and the step),
with the call's text, cameras and other conditioners, recording every self-attention's queries, keys and
values; then on the asset, where each self-attention's queries and keys are AdaIN-normalised to the
reference's (:func:`~dreamsmith.guidance.math.adain`, eq. 3) and the reference's keys and values are
appended to the asset's (eq. 2)::

    Attention(Q̂, [K̂; K_ref], [V; V_ref]),  Q̂ = AdaIN(Q, Q_ref),  K̂ = AdaIN(K, K_ref)

``scale`` λ mixes it with the layer's own attention, λ · shared + (1 − λ) · Attention(Q, K, V): 1 is the
published method; at 0 nothing is installed (no reference pass either).
Sample i of the call attends to sample i of the reference pass (same t, same branch, same view). Two
identities follow: a sample that *is* the reference (same z_t) is unchanged by AdaIN and sees every key
twice, which leaves softmax attention as it was, so its prediction is the model's own (up to rounding);
without the conditioner the model is untouched, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.guidance.attention import AttentionHook, merge_heads
from dreamsmith.guidance.conditioners import ADDITIVE_KWARGS, ConditionContext, Conditioner
from dreamsmith.guidance.math import adain, add_noise, alpha_sigma


class SharedSelfAttention(AttentionHook):
    """Records the reference pass's self-attention (``recording``), then shares it with the asset's pass."""

    _OWN = "style_aligned_own"

    def __init__(self, adain_queries: bool = True, adain_keys: bool = True, scale: float = 1.0) -> None:
        self.adain_queries = adain_queries
        self.adain_keys = adain_keys
        self.scale = scale
        self.recording = False
        self.recorded: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def applies_to(self, name: str, attn: Any) -> bool:
        return not attn.is_cross_attention

    def query(self, attn: Any, query: Tensor, context: dict[str, Any]) -> Tensor:
        context[self._OWN] = query
        if self.recording or not self.adain_queries:
            return query
        return adain(query, self.recorded[context["name"]][0].to(query))

    def key_value(
        self, attn: Any, query: Tensor, key: Tensor, value: Tensor, context: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        if self.recording:
            self.recorded[context["name"]] = (query.detach(), key.detach(), value.detach())
            return key, value
        _, ref_key, ref_value = self.recorded[context["name"]]
        context[self._OWN] = (context[self._OWN], key, value)
        if self.adain_keys:
            key = adain(key, ref_key.to(key))
        return torch.cat([key, ref_key.to(key)], dim=-2), torch.cat([value, ref_value.to(value)], dim=-2)

    def output(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        if self.recording or self.scale == 1.0:
            return hidden_states
        own = merge_heads(F.scaled_dot_product_attention(*context[self._OWN], dropout_p=0.0, is_causal=False))
        return self.scale * hidden_states + (1.0 - self.scale) * own.to(hidden_states).reshape(hidden_states.shape)


class StyleAligned(Conditioner):
    """Shares the self-attention of ``reference_latent [1, C, h, w]`` (the reference's z, clean) with every call
    (see the module doc). ``alphas_cumprod``: the prior's; ``latent_channels``: the channels of z in the UNet's
    input (ray or image channels after them are the call's own)."""

    def __init__(self, reference_latent: Tensor, alphas_cumprod: Tensor, latent_channels: int, seed: int = 0,
                 adain_queries: bool = True, adain_keys: bool = True, scale: float = 1.0) -> None:
        self.reference_latent = reference_latent
        self.alphas_cumprod = alphas_cumprod
        self.latent_channels = latent_channels
        self.seed = seed
        self.hook = SharedSelfAttention(adain_queries, adain_keys, scale)
        self.scale = scale
        self.step = 0

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        self.step = context.step  # the step's shared reference noise
        return (self.hook,) if self.scale else ()

    def reference_noise(self, step: int) -> Tensor:
        """ε_ref ``[1, C, h, w]`` of a step (the same for every sample and call of the step)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randn(self.reference_latent.shape, generator=generator)

    def reference_sample(self, sample: Tensor, t: Tensor) -> Tensor:
        """The UNet input of the reference pass: ``sample`` with its z_t replaced by z_ref noised to each t."""
        batch = sample.shape[0]
        t = torch.as_tensor(t, device=sample.device).reshape(-1).expand(batch)
        alpha, sigma = alpha_sigma(self.alphas_cumprod.to(sample.device), t)
        z_ref = self.reference_latent.to(sample).expand(batch, -1, -1, -1)
        noise = self.reference_noise(self.step).to(sample).expand(batch, -1, -1, -1)
        noised = add_noise(z_ref, noise, alpha.to(sample), sigma.to(sample))
        return torch.cat([noised, sample[:, self.latent_channels:]], dim=1)

    @contextlib.contextmanager
    def applied(self, unet: torch.nn.Module) -> Iterator[None]:
        """Runs the reference pass before each UNet call (the asset's ControlNet residuals are not the reference's)."""
        if not self.scale:
            yield
            return
        original, wrapped = unet.forward, "forward" in unet.__dict__

        def forward(sample: Tensor, timestep: Tensor, *args: Any, **kwargs: Any) -> Any:
            reference_kwargs = {k: v for k, v in kwargs.items() if k not in ADDITIVE_KWARGS}
            self.hook.recording, self.hook.recorded = True, {}
            try:
                with torch.no_grad():
                    original(self.reference_sample(sample, timestep), timestep, *args, **reference_kwargs)
            finally:
                self.hook.recording = False
            return original(sample, timestep, *args, **kwargs)

        unet.forward = forward
        try:
            yield
        finally:
            if wrapped:
                unet.forward = original
            else:
                del unet.forward
            self.hook.recorded = {}
