"""Self-guidance (Epstein et al. 2023, "Diffusion Self-Guidance for Controllable Image Generation") as a
conditioner: energies on the cross-attention maps of chosen prompt words, their gradient w.r.t. z_t added
to the noise prediction, ε̂ += v σ_t ∇_{z_t} g (:func:`~dreamsmith.guidance.math.self_guidance_noise`).

The call's conditional samples (branch ``"cond"``; every sample of a call without branches) record each
word's map in every cross-attention layer: the softmax probabilities on the word's tokens, summed over its
tokens, averaged over heads, brought to the finest layer's resolution and averaged over layers. Each term
(:mod:`dreamsmith.self_guidance_terms`) turns its word's map into an energy; the call's input z_t is a leaf
that requires grad, and the gradient of Σ weight·g is added to every branch of the same view, which adds it
once to the classifier-free-guided ε̂ (the branch weights sum to 1). At weight 0, or in a call without a
conditional branch (VSD's particle score), it installs nothing: the model's own attention, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.guidance.attention import AttentionHook
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner, tile_to_batch
from dreamsmith.guidance.math import alpha_sigma, self_guidance_energy, self_guidance_noise
from dreamsmith.self_guidance_terms import SelfGuidanceTerm

GUIDED_BRANCH = "cond"


class WordMapRecorder(AttentionHook):
    """Keeps, for the samples ``rows`` of the call, each word's cross-attention map of every layer:
    ``maps`` is a list of ``[len(rows), words, L_q]`` (differentiable). spans: ``[start, end)`` token
    positions of each word."""

    needs_probabilities = True

    def __init__(self, rows: Tensor, spans: Sequence[tuple[int, int]]) -> None:
        self.rows = rows
        self.spans = list(spans)
        self.maps: list[Tensor] = []

    def applies_to(self, name: str, attn: Any) -> bool:
        return bool(attn.is_cross_attention)

    def probabilities(self, attn: Any, probs: Tensor, context: dict[str, Any]) -> Tensor:
        mean = probs[self.rows.to(probs.device)].float().mean(dim=1)  # [n, L_q, L_k]
        self.maps.append(torch.stack([mean[..., s:e].sum(-1) for s, e in self.spans], dim=1))
        return probs


def word_maps(maps: Sequence[Tensor], height: int, width: int) -> Tensor:
    """The layers' maps ``[n, words, h_l*w_l]`` (images of the aspect ``height:width``) at the finest layer's
    resolution, averaged over layers: ``[n, words, h, w]``."""
    sizes = []
    for layer in maps:
        rows = round(math.sqrt(layer.shape[-1] * height / width))
        sizes.append((rows, layer.shape[-1] // rows))
    finest = max(sizes)
    images = [
        F.interpolate(layer.unflatten(-1, size), size=finest, mode="bilinear", align_corners=False)
        if size != finest else layer.unflatten(-1, size)
        for layer, size in zip(maps, sizes, strict=True)
    ]
    return torch.stack(images).mean(0)


def term_target(term: SelfGuidanceTerm, height: int, width: int) -> Tensor:
    """The target of a term as the energy reads it: ``[2]``, ``[]`` or a mask ``[height, width]``."""
    if term.kind != "shape":
        values = torch.tensor(term.target, dtype=torch.float32)
        return values if term.kind == "centroid" else values[0]
    xs = ((torch.arange(width) + 0.5) / width)[None, :]
    ys = ((torch.arange(height) + 0.5) / height)[:, None]
    kind, *params = term.target
    if kind == 1.0:
        x0, y0, x1, y1 = params
        return ((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)).float()
    x, y, radius = params
    return (((xs - x) ** 2 + (ys - y) ** 2) <= radius**2).float()


class SelfGuidance(Conditioner):
    """Self-guidance terms on words of the guidance's prompt (see the module doc).

    terms: the energies; spans: ``[start, end)`` token positions of each term's word; weight: v, the
    strength of all terms; alphas_cumprod: the prior's ᾱ_t, for σ_t. ``last_energy``: ``[n]`` each guided
    sample's Σ weight·g in the last call, ``last_maps``: ``[n, terms, h, w]`` its word maps (for logs and tests).
    """

    def __init__(
        self, terms: Sequence[SelfGuidanceTerm], spans: Sequence[tuple[int, int]], weight: float,
        alphas_cumprod: Tensor, sharpness: float = 10.0,
    ) -> None:
        if len(terms) != len(spans):
            raise ValueError(f"{len(terms)} self-guidance terms need {len(terms)} token spans, got {len(spans)}")
        self.terms, self.spans = list(terms), list(spans)
        self.scale = weight
        self.alphas_cumprod = alphas_cumprod
        self.sharpness = sharpness
        self.recorder: WordMapRecorder | None = None
        self.last_energy: Tensor | None = None
        self.last_maps: Tensor | None = None

    def _rows(self, context: ConditionContext) -> Tensor | None:
        if not context.branch_labels:
            return None
        return torch.tensor([i for i, b in enumerate(context.branch_labels) if b == GUIDED_BRANCH], dtype=torch.long)

    def wants_input_grad(self, context: ConditionContext) -> bool:
        rows = self._rows(context)
        return self.scale != 0.0 and bool(self.terms) and (rows is None or len(rows) > 0)

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        self.recorder = None
        if not self.wants_input_grad(context):
            return ()
        rows = self._rows(context)
        if rows is None:
            rows = torch.arange(len(context.timesteps)) if context.timesteps is not None else None
        if rows is None:
            raise ValueError("SelfGuidance needs the call's timesteps or branch labels in its ConditionContext")
        self.recorder = WordMapRecorder(rows, self.spans)
        return [self.recorder]

    def energy(self, z_t: Tensor) -> Tensor:
        """``[n]`` Σ weight·g of each guided sample, from the maps the last call recorded (``z_t``: its input,
        for the image's aspect)."""
        if self.recorder is None or not self.recorder.maps:
            raise ValueError("SelfGuidance recorded no cross-attention maps: does the UNet cross-attend to text?")
        maps = word_maps(self.recorder.maps, z_t.shape[-2], z_t.shape[-1])
        self.last_maps = maps.detach()
        total = maps.new_zeros(maps.shape[0])
        for index, term in enumerate(self.terms):
            target = term_target(term, *maps.shape[-2:]).to(maps)
            total = total + term.weight * self_guidance_energy(term.kind, maps[:, index], target, self.sharpness)
        return total

    def noise_correction(self, z_t: Tensor, context: ConditionContext) -> Tensor | None:
        if self.recorder is None:
            return None
        energy = self.energy(z_t)
        self.last_energy = energy.detach()
        (grad,) = torch.autograd.grad(energy.sum(), z_t)
        rows = self.recorder.rows.to(grad.device)
        guided = tile_to_batch(grad[rows], z_t.shape[0]) if context.branch_labels else grad
        _, sigma = alpha_sigma(self.alphas_cumprod.to(grad.device), context.timesteps.to(grad.device))
        self.recorder = None
        return self_guidance_noise(guided.float(), sigma, self.scale)
