"""IP-Adapter (Ye et al. 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image Diffusion
Models", eq. 5): decoupled cross-attention, as a conditioner on the prior's call.

Every cross-attention layer of the UNet keeps its text attention and adds a second one, with the same
queries, over the image tokens (:mod:`dreamsmith.guidance.image_projection`) through the layer's own
``to_k_ip``/``to_v_ip``::

    Z_new = Attention(Q, K_text, V_text) + λ · Attention(Q, K_img, V_img)

The reference image is encoded and projected once per run (its tokens are cached); the unconditional
branch of classifier-free guidance gets the tokens of the *zero image* instead, as the published
reference does (the plain adapter projects a zero embedding; the "plus" adapter encodes an all-zero pixel
tensor), so ε_cond − ε_uncond carries the image. At λ = 0 nothing is installed: the base model, bit for bit.
The attention layers are numbered as in the published checkpoints: a cross-attention layer's number is its
position among all of the UNet's attention processors (``attn_processors`` order; self-attention layers
count too, so SD's are 1, 3, 5, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamsmith.guidance.attention import AttentionHook, merge_heads
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner, tile_to_batch

UNCONDITIONAL_BRANCHES = ("uncond",)
"""Branch labels that get the zero image's tokens (the classifier-free-guidance base)."""


def cross_attention_layers(unet: nn.Module) -> dict[str, str]:
    """``{published layer number: attention processor name}`` of the UNet's cross-attention layers."""
    return {str(index): name for index, name in enumerate(unet.attn_processors)
            if not name.endswith("attn1.processor")}


class IPAdapterLayer(nn.Module):
    """One cross-attention layer's image keys and values (``{n}.to_k_ip``, ``{n}.to_v_ip``)."""

    def __init__(self, token_width: int, hidden_size: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(token_width, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(token_width, hidden_size, bias=False)


class IPAdapter(nn.Module):
    """The trained part: ``image_proj`` (image embedding -> tokens) and ``ip_adapter`` (a layer per
    cross-attention layer, by published number); ``layer_names`` maps each number to its processor name.
    ``reads_hidden_states``: the projection reads the encoder's penultimate hidden states ("plus"),
    else its pooled, projected embedding."""

    def __init__(self, image_proj: nn.Module, layers: dict[str, IPAdapterLayer], layer_names: dict[str, str],
                 reads_hidden_states: bool) -> None:
        super().__init__()
        self.image_proj = image_proj
        self.ip_adapter = nn.ModuleDict(layers)
        self.layer_names = dict(layer_names)
        self.reads_hidden_states = reads_hidden_states

    def by_processor(self) -> dict[str, IPAdapterLayer]:
        return {self.layer_names[number]: layer for number, layer in self.ip_adapter.items()}


class DecoupledCrossAttention(AttentionHook):
    """Adds ``scale`` × the attention of each sample's queries over its image tokens to every adapted
    cross-attention layer's output. tokens: ``[B_call, N, D]``, one set per sample of the call."""

    _QUERY = "ip_adapter_query"

    def __init__(self, layers: dict[str, IPAdapterLayer], tokens: Tensor, scale: float) -> None:
        self.layers = layers
        self.tokens = tokens
        self.scale = scale

    def applies_to(self, name: str, attn: Any) -> bool:
        return name in self.layers

    def key_value(
        self, attn: Any, query: Tensor, key: Tensor, value: Tensor, context: dict[str, Any]
    ) -> tuple[Tensor, Tensor]:
        context[self._QUERY] = query  # the image attention uses the text attention's queries
        return key, value

    def output(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        query = context[self._QUERY]
        layer = self.layers[context["name"]]
        tokens = self.tokens.to(query)
        batch, heads, _, head_dim = query.shape
        key = layer.to_k_ip(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        value = layer.to_v_ip(tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        return hidden_states + self.scale * self.image_attention(query, key, value).to(query.dtype)

    def image_attention(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """``[B, L, heads · d]``: the queries' attention over the image tokens' keys and values."""
        return merge_heads(F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False))


class IPAdapterConditioner(Conditioner):
    """An image prompt: ``image_tokens [1, N, D]`` (the reference's, cached) in the conditional branches,
    ``zero_tokens [1, N, D]`` (the zero image's) in the unconditional one, at strength ``scale``."""

    def __init__(self, adapter: IPAdapter, image_tokens: Tensor, zero_tokens: Tensor, scale: float = 1.0) -> None:
        self.adapter = adapter
        self.layers = adapter.by_processor()
        self.image_tokens = image_tokens
        self.zero_tokens = zero_tokens
        self.scale = scale

    def tokens_for(self, context: ConditionContext, batch: int) -> Tensor:
        """``[batch, N, D]``: each sample's tokens by its branch label (the image's for all without labels)."""
        labels = context.branch_labels or ("cond",)
        unconditional = tile_to_batch(torch.tensor([label in UNCONDITIONAL_BRANCHES for label in labels]), batch)
        return torch.where(unconditional.view(-1, 1, 1).to(self.image_tokens.device),
                           self.zero_tokens, self.image_tokens)

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        if self.scale == 0:
            return ()  # the base model's attention, bit for bit
        batch = len(context.timesteps) if context.timesteps is not None else len(context.branch_labels) or 1
        return [DecoupledCrossAttention(self.layers, self.tokens_for(context, batch), self.scale)]
