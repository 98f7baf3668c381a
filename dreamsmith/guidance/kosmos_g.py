"""KOSMOS-G's published AlignerNet layout (``microsoft/unilm``, ``kosmos-g/unilm/models/aligner.py``): read and checked.

The inference aligner (``Aligner_encoder``) maps the MLLM's output ``[B, N, D_mllm]`` to the 77 × 768 hidden states
Stable Diffusion 1.5's UNet reads as ``encoder_hidden_states`` (it replaces the CLIP text encoder's *output*). It is
torchscale's modules with the defaults of its ``EncoderDecoderConfig`` (768 wide, 12 heads, FFN 3072, pre-norm,
``subln``), under these keys (optionally behind ``aligner.``, as in the full KOSMOS-G checkpoint):

- ``encoder_proj``: a torchscale ``Encoder``: ``embed_tokens`` (Linear D_mllm -> 768), ``embed_positions.weight``
  ``[32768, 768]``, ``layers.{i}`` (``self_attn.{q,k,v,out}_proj``, ``self_attn.inner_attn_ln``,
  ``self_attn_layer_norm``, ``ffn.fc1``, ``ffn.fc2``, ``ffn.ffn_layernorm``, ``final_layer_norm``), ``layer_norm``;
- ``encoder_query`` ``[77, 768]``: the learned queries;
- ``encoder``: a torchscale ``Decoder`` whose queries cross-attend to ``encoder_proj``'s output: ``layers.{i}`` (the
  same self-attention and FFN keys, plus ``encoder_attn.{q,k,v,out}_proj`` (no inner norm) and
  ``encoder_attn_layer_norm``), ``layer_norm``.

The training-time ``Aligner`` also holds ``decoder_query``, ``decoder.*``, ``decoder_proj.*`` (the reconstruction
branch) and ``clip_encoder.*`` (the frozen CLIP text encoder); they are not part of the inference aligner and are
set aside. Only the layout is implemented here (the sizes read from the shapes, every key accounted for); running
it needs KOSMOS-G's MLLM, which dreamsmith does not provide, and its output is the text encoder's output, not the
input word embeddings the project's own aligner writes (:mod:`dreamsmith.guidance.aligner`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from dreamsmith.errors import ModelLoadError

PREFIX = "aligner."
TRAINING_ONLY = ("decoder_query", "decoder.", "decoder_proj.", "clip_encoder.")
LINEAR = ("weight", "bias")
ATTENTION = tuple(f"{proj}_proj" for proj in ("q", "k", "v", "out"))


@dataclass(frozen=True)
class AlignerNetLayout:
    """The sizes of a published AlignerNet: the MLLM's width in, the queries (77) × width (768) out, the layers."""

    mllm_dim: int
    queries: int
    width: int
    encoder_layers: int
    decoder_layers: int
    subln: bool


def _layer_keys(prefix: str, cross_attention: bool, subln: bool) -> list[str]:
    names = [f"self_attn.{proj}" for proj in ATTENTION] + ["self_attn_layer_norm", "ffn.fc1", "ffn.fc2",
                                                          "final_layer_norm"]
    if subln:
        names += ["self_attn.inner_attn_ln", "ffn.ffn_layernorm"]
    if cross_attention:
        names += [f"encoder_attn.{proj}" for proj in ATTENTION] + ["encoder_attn_layer_norm"]
    return [f"{prefix}{name}.{part}" for name in names for part in LINEAR]


def expected_keys(layout: AlignerNetLayout) -> set[str]:
    """Every key of an inference AlignerNet with these sizes."""
    keys = {"encoder_query", "encoder_proj.embed_positions.weight", "encoder_proj.layer_norm.weight",
            "encoder_proj.layer_norm.bias", "encoder.layer_norm.weight", "encoder.layer_norm.bias",
            *(f"encoder_proj.embed_tokens.{part}" for part in LINEAR)}
    for i in range(layout.encoder_layers):
        keys.update(_layer_keys(f"encoder_proj.layers.{i}.", False, layout.subln))
    for i in range(layout.decoder_layers):
        keys.update(_layer_keys(f"encoder.layers.{i}.", True, layout.subln))
    return keys


def _layers(state: Mapping[str, Tensor], prefix: str) -> int:
    found = {int(key[len(prefix):].split(".")[0]) for key in state if key.startswith(prefix)}
    return max(found) + 1 if found else 0


def read_aligner_net(state: Mapping[str, Tensor]) -> tuple[AlignerNetLayout, dict[str, Tensor]]:
    """The layout and the inference tensors (keys without ``aligner.``) of a KOSMOS-G AlignerNet state dict; a
    one-line ``ModelLoadError`` naming missing and unexpected keys, or a shape that does not fit."""
    if any(key.startswith(PREFIX) for key in state):
        state = {key[len(PREFIX):]: value for key, value in state.items() if key.startswith(PREFIX)}
    tensors = {key: value for key, value in state.items() if not key.startswith(TRAINING_ONLY)}
    for key in ("encoder_query", "encoder_proj.embed_tokens.weight"):
        if key not in tensors:
            raise ModelLoadError(f"not a KOSMOS-G AlignerNet state dict: no {key} (keys: "
                                 f"{', '.join(sorted(tensors)[:3]) or 'none'}...)")
    queries, width = tensors["encoder_query"].shape
    projection = tensors["encoder_proj.embed_tokens.weight"]
    layout = AlignerNetLayout(
        mllm_dim=int(projection.shape[1]), queries=int(queries), width=int(width),
        encoder_layers=_layers(tensors, "encoder_proj.layers."), decoder_layers=_layers(tensors, "encoder.layers."),
        subln=any(key.endswith("inner_attn_ln.weight") for key in tensors),
    )
    expected = expected_keys(layout)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ModelLoadError(f"the KOSMOS-G AlignerNet does not fit its layout: {len(missing)} missing "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(unexpected)} "
                             f"unexpected ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if projection.shape[0] != width:
        raise ModelLoadError(f"encoder_proj.embed_tokens writes {projection.shape[0]}-wide tokens, the queries are "
                             f"{width} wide")
    return layout, tensors
