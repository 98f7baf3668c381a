"""IDM-VTON's published layout on tiny random weights: the loader, and the invariants of its garment paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from test_generate import assert_clean_failure, run_cli  # noqa: E402
from tryon_models import build_tiny_idm_vton, tiny_tryon_unet, tryon_with_model  # noqa: E402
from tryon_score import capsule, striped_garment  # noqa: E402

from dreamsmith.guidance.attention import hooks_active  # noqa: E402
from dreamsmith.tryon.idm_vton import IDMVTON  # noqa: E402
from dreamsmith.tryon.reference_attention import JoinReferenceAttention, RecordSelfAttention  # noqa: E402


@pytest.fixture(scope="module")
def idm_dir(tmp_path_factory):
    return build_tiny_idm_vton(tmp_path_factory.mktemp("models") / "tiny-idm-vton")


@pytest.fixture(scope="module")
def model(idm_dir):
    return IDMVTON.load(idm_dir, torch.device("cpu"))


def inputs(model, seed=0, batch=2):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 13, 4, 4, generator=generator)
    text = model.prior.encode_prompts(["model is wearing a shirt"] * batch)
    embeds, added = model.prior.text_condition(text)
    return sample, torch.tensor(500), embeds, added


def test_the_loader_reads_every_weight_of_the_published_layout(idm_dir, model):
    state = load_file(idm_dir / "unet" / "diffusion_pytorch_model.safetensors")
    ip_keys = [key for key in state if ".to_k_ip." in key]
    assert ip_keys and len(model.image_prompt.names) == len(ip_keys)
    name = model.image_prompt.names[0]
    assert torch.equal(model.image_prompt.to_v_ip[0].weight, state[f"{name}.to_v_ip.weight"])
    assert torch.equal(model.resampler.latents, state["encoder_hid_proj.latents"])
    assert model.unet.config.in_channels == 13
    assert torch.equal(model.unet.conv_in.weight, state["conv_in.weight"])
    tokens = model.image_tokens(torch.rand(2, 16, 16, 3))
    assert tokens.shape == (2, 4, model.unet.config.cross_attention_dim)


def test_zero_image_values_and_no_garment_tokens_equal_the_base_inpainting_unet_bit_for_bit(model):
    sample, timestep, embeds, added = inputs(model)
    base = model.unet(sample, timestep, encoder_hidden_states=embeds, **added).sample
    tokens = model.image_tokens(torch.rand(2, 16, 16, 3))
    saved = [layer.weight.detach().clone() for layer in model.image_prompt.to_v_ip]
    try:
        for layer in model.image_prompt.to_v_ip:
            layer.weight.data.zero_()
        zero = model.tryon_unet(sample, timestep, embeds, added, tokens, [])
    finally:
        for layer, weight in zip(model.image_prompt.to_v_ip, saved, strict=True):
            layer.weight.data.copy_(weight)
    assert torch.equal(zero, base)
    dressed = model.tryon_unet(sample, timestep, embeds, added, tokens, [])
    assert (dressed - base).abs().max() > 1e-4  # the image path is live with its own weights


def test_zero_pose_channels_equal_the_nine_channel_inpainting_unet(model):
    sample, timestep, embeds, added = inputs(model)
    nine = tiny_tryon_unet(9)
    state = {key: value.clone() for key, value in model.unet.state_dict().items()}
    state["conv_in.weight"] = state["conv_in.weight"][:, :9]
    nine.load_state_dict(state)
    thirteen = tiny_tryon_unet(13)
    state = {key: value.clone() for key, value in model.unet.state_dict().items()}
    state["conv_in.weight"][:, 9:] = 0
    thirteen.load_state_dict(state)
    pose = torch.randn_like(sample[:, 9:])
    expected = nine(sample[:, :9], timestep, encoder_hidden_states=embeds, **added).sample
    got = thirteen(torch.cat([sample[:, :9], pose], 1), timestep, encoder_hidden_states=embeds, **added).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_garment_tokens_equal_to_the_models_own_leave_the_output_unchanged(model):
    sample, timestep, embeds, added = inputs(model)
    recorder = RecordSelfAttention()
    with hooks_active(model.unet, [recorder]):
        base = model.unet(sample, timestep, encoder_hidden_states=embeds, **added).sample
    own = dict(recorder.features)
    assert own
    for garments in (1, 2):  # one garment, or two garments' tokens concatenated
        with hooks_active(model.unet, [JoinReferenceAttention([own] * garments)]):
            joined = model.unet(sample, timestep, encoder_hidden_states=embeds, **added).sample
        torch.testing.assert_close(joined, base, rtol=0, atol=2e-5)
    other = {name: torch.randn_like(tokens) for name, tokens in own.items()}
    with hooks_active(model.unet, [JoinReferenceAttention([other])]):
        changed = model.unet(sample, timestep, encoder_hidden_states=embeds, **added).sample
    assert (changed - base).abs().max() > 1e-4


def test_garment_net_tokens_are_recorded_for_every_self_attention_module(model):
    text = model.prior.encode_prompts(["a photo of a shirt"])
    tokens = model.garment_tokens(torch.randn(1, 4, 4, 4), torch.tensor(500), text)
    self_attention = [name for name, p in model.unet.attn_processors.items()
                      if not model.unet.get_submodule(name.removesuffix(".processor")).is_cross_attention]
    assert sorted(tokens) == sorted(self_attention)


@pytest.mark.slow
def test_dreamsmith_tryon_runs_idm_vton_end_to_end_on_tiny_weights(idm_dir, tmp_path):
    scores, out = tryon_with_model(tmp_path, f"idm-vton:{idm_dir}")
    assert scores["body_error"] <= 0.03, scores  # outside the region the capsule keeps its colour
    assert scores["garment_error"] > 0.05, scores  # inside, the random model painted something else
    assert (out / "previews" / "tryon_views.png").is_file()


def test_an_idm_vton_folder_missing_a_part_is_refused_in_one_line(tmp_path):
    capsule(tmp_path / "capsule.glb", 16)
    striped_garment(tmp_path / "stripes.png")
    (tmp_path / "not-a-model").mkdir()
    result = run_cli("tryon", str(tmp_path / "capsule.glb"), str(tmp_path / "stripes.png"), "--model",
                     f"idm-vton:{tmp_path / 'not-a-model'}", "--out", str(tmp_path / "run"))
    assert_clean_failure(result, "not an IDM-VTON model folder")
