"""Attention processors that compose: several techniques active on one ``Attention`` module at once.

diffusers gives each ``Attention`` module one processor, so two techniques that each install their own
(multi-view attention, Prompt-to-Prompt, a shared-attention style) replace each other. Here each module
gets one :class:`HookedAttnProcessor` for good; techniques contribute :class:`AttentionHook` objects for
the duration of one model call, and the processor runs every active hook at its stage of the attention:

- ``hidden_states(attn, hidden_states, context)``: the module's input ``[B, L, C]`` (multi-view
  attention folds views into one sequence here and unfolds in ``output``);
- ``query(attn, query, context)``: the projected queries ``[B, heads, L, d]`` (shared-attention style
  normalises them to a reference's statistics);
- ``key_value(attn, query, key, value, context)``: projected ``[B, heads, L, d]`` tensors (shared-attention
  style appends a reference's keys and values);
- ``probabilities(attn, probs, context)``: the softmax map ``[B, heads, L_q, L_k]`` (Prompt-to-Prompt
  replaces or re-weights cross-attention maps; self-guidance reads them);
- ``output(attn, hidden_states, context)``: the attended features ``[B, L, C]`` before the output
  projection.

With no active hook the module's original processor runs, so the output is bit-identical to the
model's own. With hooks, attention is computed by :func:`attend` with the same operations as
diffusers' ``AttnProcessor2_0`` (explicit probabilities only when a hook asks for them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class AttentionHook:
    """One technique's changes to attention; every stage is a no-op unless overridden.

    ``applies_to(name, attn)`` selects modules (e.g. self-attention only: ``not attn.is_cross_attention``).
    ``needs_probabilities``: the hook reads or changes the softmax map (forces the explicit path).
    """

    needs_probabilities: bool = False

    def applies_to(self, name: str, attn: Any) -> bool:
        return True

    def hidden_states(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        return hidden_states

    def query(self, attn: Any, query: Tensor, context: dict[str, Any]) -> Tensor:
        return query

    def key_value(
        self, attn: Any, query: Tensor, key: Tensor, value: Tensor, context: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        return key, value

    def probabilities(self, attn: Any, probs: Tensor, context: dict[str, Any]) -> Tensor:
        return probs

    def output(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        return hidden_states


class HookedAttnProcessor:
    """Runs the module's original processor, or :func:`attend` with the active hooks (see module doc)."""

    def __init__(self, name: str, original: Any) -> None:
        self.name = name
        self.original = original
        self.hooks: list[AttentionHook] = []

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        hooks = [hook for hook in self.hooks if hook.applies_to(self.name, attn)]
        if not hooks:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        return attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb, hooks, self.name)


def attend(
    attn: Any,
    hidden_states: Tensor,
    encoder_hidden_states: Tensor | None,
    attention_mask: Tensor | None,
    temb: Tensor | None,
    hooks: Sequence[AttentionHook],
    name: str = "",
) -> Tensor:
    """diffusers' scaled-dot-product attention (``AttnProcessor2_0``) with hook stages in between."""
    context: dict[str, Any] = {"name": name, "is_cross": encoder_hidden_states is not None}
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    for hook in hooks:
        hidden_states = hook.hidden_states(attn, hidden_states, context)
    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        key, value = project_key_value(attn, hidden_states, normalize=False)
    else:
        key, value = project_key_value(attn, encoder_hidden_states)
    head_dim = key.shape[-1]
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    for hook in hooks:
        query = hook.query(attn, query, context)
    for hook in hooks:
        key, value = hook.key_value(attn, query, key, value, context)
    if any(hook.needs_probabilities for hook in hooks):
        scores = query @ key.transpose(-1, -2) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(dim=-1).to(value.dtype)
        for hook in hooks:
            probs = hook.probabilities(attn, probs, context)
        hidden_states = probs @ value
    else:
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
    hidden_states = merge_heads(hidden_states).to(query.dtype)
    for hook in hooks:
        hidden_states = hook.output(attn, hidden_states, context)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(residual.shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def project_key_value(attn: Any, context_states: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """Keys and values ``[B, heads, L, d]`` of ``context_states [B, L, C]`` as the module computes them
    (``normalize``: the module's cross-attention norm first, when it has one)."""
    if normalize and attn.norm_cross:
        context_states = attn.norm_encoder_hidden_states(context_states)
    batch = context_states.shape[0]
    key = attn.to_k(context_states)
    value = attn.to_v(context_states)
    head_dim = key.shape[-1] // attn.heads
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return key, value


def merge_heads(hidden_states: Tensor) -> Tensor:
    """``[B, heads, L, d]`` -> ``[B, L, heads * d]``."""
    batch, heads, length, head_dim = hidden_states.shape
    return hidden_states.transpose(1, 2).reshape(batch, length, heads * head_dim)


def cross_attend(attn: Any, query: Tensor, context_states: Tensor) -> Tensor:
    """The module's attention of ``query [B, heads, L_q, d]`` (projected, normed) over other context
    states ``[B, L_k, C]`` (e.g. another prompt's embeddings): ``[B, L_q, heads * d]`` before the output
    projection, computed as :func:`attend` computes it."""
    key, value = project_key_value(attn, context_states)
    attended = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    return merge_heads(attended).to(query.dtype)


def hooked_processors(unet: torch.nn.Module) -> dict[str, HookedAttnProcessor]:
    """The UNet's :class:`HookedAttnProcessor` per attention module, installed on first use around
    whatever processor each module had (idempotent; outputs unchanged while no hook is active)."""
    processors = unet.attn_processors
    if not all(isinstance(p, HookedAttnProcessor) for p in processors.values()):
        unet.set_attn_processor({
            name: p if isinstance(p, HookedAttnProcessor) else HookedAttnProcessor(name, p)
            for name, p in processors.items()
        })
        processors = unet.attn_processors
    return processors


@contextlib.contextmanager
def hooks_active(unet: torch.nn.Module, hooks: Sequence[AttentionHook]) -> Iterator[None]:
    """Activate ``hooks`` (in order, after any already active) on every attention module of ``unet``
    for the duration of the block."""
    if not hooks:
        yield
        return
    processors = [p for p in hooked_processors(unet).values() if isinstance(p, HookedAttnProcessor)]
    for processor in processors:
        processor.hooks.extend(hooks)
    try:
        yield
    finally:
        for processor in processors:
            del processor.hooks[len(processor.hooks) - len(hooks):]
