"""A garment UNet's self-attention features joined to a try-on UNet's (IDM-VTON's GarmentNet, and the
reference attention of StableVITON-like and multi-garment models).

The garment UNet runs on the garment's latents; :class:`RecordSelfAttention` keeps each self-attention
module's input tokens (the normalised hidden states its transformer block feeds it). In the try-on UNet,
:class:`JoinReferenceAttention` appends the keys and values of the same module's garment tokens
(projected by the try-on module's own ``to_k``/``to_v``) to its own, so every person token can attend to
the garment; the person's queries and output length are unchanged. Several garments: their tokens are
concatenated. Modules are matched by name, so both UNets must share the architecture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dreamsmith.guidance.attention import AttentionHook, project_key_value


class RecordSelfAttention(AttentionHook):
    """Keeps every self-attention module's input tokens ``[B, L, C]`` in ``features`` by module name."""

    def __init__(self) -> None:
        self.features: dict[str, Tensor] = {}

    def applies_to(self, name: str, attn: Any) -> bool:
        return not attn.is_cross_attention

    def hidden_states(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        self.features[context["name"]] = hidden_states
        return hidden_states


class JoinReferenceAttention(AttentionHook):
    """Appends the keys and values of reference tokens to each self-attention module's own.

    references: one ``{module name: tokens [B or 1, L_r, C]}`` per garment (from :class:`RecordSelfAttention`);
    modules without tokens attend as before."""

    def __init__(self, references: list[dict[str, Tensor]]) -> None:
        self.references = references

    def applies_to(self, name: str, attn: Any) -> bool:
        return not attn.is_cross_attention and any(name in reference for reference in self.references)

    def key_value(self, attn: Any, query: Tensor, key: Tensor, value: Tensor,
                  context: dict[str, Any]) -> tuple[Tensor, Tensor]:
        keys, values = [key], [value]
        for reference in self.references:
            tokens = reference.get(context["name"])
            if tokens is None:
                continue
            tokens = tokens.to(key.dtype).expand(key.shape[0], -1, -1) if len(tokens) == 1 else tokens.to(key.dtype)
            extra_key, extra_value = project_key_value(attn, tokens, normalize=False)
            keys.append(extra_key)
            values.append(extra_value)
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)
