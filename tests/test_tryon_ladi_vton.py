"""LaDI-VTON's published layouts on tiny random weights: the inversion adapter's keys, pseudo-words in the
prompt (the model's own token leaves the text encoding unchanged), and the 31-channel try-on UNet."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from conftest import tiny_text_components, tiny_unet  # noqa: E402
from tryon_models import build_tiny_ladi_vton, tryon_with_model  # noqa: E402

from dreamsmith.tryon.ladi_vton import (  # noqa: E402
    UNET_CHANNELS,
    InversionAdapter,
    extended_unet,
    garment_prompt,
    pseudo_words,
)

WORDS = 3
MARKER = "!"  # the tiny vocabulary's stand-in for the published '$'
PROMPT = "ab ! ! !"  # the tiny encoder reads 16 characters: a short stand-in for garment_prompt's text


def vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=8)


def published_adapter_state(output_dim: int) -> dict[str, torch.Tensor]:
    """Random tensors under the release file's keys (CLIPEncoderLayer's, then the MLP's Sequential indices)."""
    generator = torch.Generator().manual_seed(0)
    shapes = {"post_layernorm.weight": (16,), "post_layernorm.bias": (16,), "layers.0.weight": (64, 16),
              "layers.0.bias": (64,), "layers.3.weight": (64, 64), "layers.3.bias": (64,),
              "layers.6.weight": (output_dim, 64), "layers.6.bias": (output_dim,)}
    layer = "encoder_layers.0"
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        shapes[f"{layer}.self_attn.{name}.weight"], shapes[f"{layer}.self_attn.{name}.bias"] = (16, 16), (16,)
    for name in ("layer_norm1", "layer_norm2"):
        shapes[f"{layer}.{name}.weight"], shapes[f"{layer}.{name}.bias"] = (16,), (16,)
    shapes.update({f"{layer}.mlp.fc1.weight": (24, 16), f"{layer}.mlp.fc1.bias": (24,),
                   f"{layer}.mlp.fc2.weight": (16, 24), f"{layer}.mlp.fc2.bias": (16,)})
    return {key: torch.randn(shape, generator=generator) * 0.2 for key, shape in shapes.items()}


def encode(text_encoder, tokenizer, prompts, words=None):
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    if words is None:
        return text_encoder(ids).last_hidden_state, ids
    marker = tokenizer.convert_tokens_to_ids(MARKER + "</w>")
    with pseudo_words(text_encoder, ids, marker, words):
        return text_encoder(ids).last_hidden_state, ids


def test_garment_pseudo_words_from_the_published_adapter_layout_steer_the_prompt(tmp_path):
    text_encoder, tokenizer = tiny_text_components(tmp_path)
    width = text_encoder.config.hidden_size
    adapter = InversionAdapter.from_state_dict(published_adapter_state(WORDS * width), vision_config())
    features = torch.randn(2, 17, 16)
    words = adapter(features).reshape(2, WORDS, width)
    prompt = PROMPT
    plain, ids = encode(text_encoder, tokenizer, [prompt] * 2)
    steered, _ = encode(text_encoder, tokenizer, [prompt] * 2, words)
    first = int((ids[0] == tokenizer.convert_tokens_to_ids(MARKER + "</w>")).nonzero()[0])
    assert torch.equal(steered[:, :first], plain[:, :first])  # causal: the words before the garment unchanged
    assert (steered[:, first:] - plain[:, first:]).abs().max() > 1e-4
    assert (steered[0] - steered[1]).abs().max() > 1e-5  # two garments, two encodings


def test_pseudo_words_equal_to_the_models_own_marker_token_leave_the_encoding_unchanged(tmp_path):
    text_encoder, tokenizer = tiny_text_components(tmp_path)
    plain, ids = encode(text_encoder, tokenizer, [PROMPT])
    marker = tokenizer.convert_tokens_to_ids(MARKER + "</w>")
    own = text_encoder.get_input_embeddings().weight[marker].detach().expand(1, WORDS, -1)
    same, _ = encode(text_encoder, tokenizer, [PROMPT], own)
    assert garment_prompt("a dress", 2) == "a photo of a model wearing a dress $ $"
    assert torch.equal(same, plain)


def test_zero_pose_and_garment_channels_equal_the_nine_channel_inpainting_unet():
    nine = tiny_unet(4, 9, out_channels=4)
    state = {key: value.clone() for key, value in nine.state_dict().items()}
    extra = torch.zeros(state["conv_in.weight"].shape[0], UNET_CHANNELS - 9, 3, 3)
    state["conv_in.weight"] = torch.cat([state["conv_in.weight"], extra], dim=1)
    unet = extended_unet(dict(nine.config), state)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, UNET_CHANNELS, 4, 4, generator=generator)
    text = torch.randn(1, 16, 32, generator=generator)
    with torch.no_grad():
        got = unet(sample, 300, encoder_hidden_states=text).sample
        expected = nine(sample[:, :9], 300, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert unet.config.in_channels == UNET_CHANNELS


@pytest.mark.slow
def test_dreamsmith_tryon_runs_ladi_vton_end_to_end_on_tiny_weights(tmp_path):
    scores, _ = tryon_with_model(tmp_path, f"ladi-vton:{build_tiny_ladi_vton(tmp_path / 'tiny-ladi-vton')}")
    assert scores["body_error"] <= 0.03 and scores["garment_error"] > 0.05, scores


def test_the_loaded_model_puts_sixteen_garment_words_in_its_prompt(tmp_path):
    from dreamsmith.tryon.ladi_vton import LaDIVTON

    model = LaDIVTON.load(build_tiny_ladi_vton(tmp_path / "tiny"), torch.device("cpu"))
    words = model.pseudo_words(torch.rand(1, 16, 16, 3))
    assert words.shape == (1, 16, 32)
    prompt = garment_prompt("a shirt", 16)
    plain, steered = model.encode([prompt], None), model.encode([prompt], words)
    marker = model.prior.tokenizer.convert_tokens_to_ids("$</w>")
    own = model.prior.text_encoder.get_input_embeddings().weight[marker].expand(1, 16, -1)
    assert torch.equal(model.encode([prompt], own), plain) and (steered - plain).abs().max() > 1e-4
