"""PhotoMaker v1: the ID encoder and fuse MLP on a synthetic photomaker-v1.bin, its LoRA, and the invariants: a
prompt without the trigger word encodes bit for bit as before; with it only the class token's positions change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from identity_states import photomaker_state
from ip_adapter_states import save_safetensors

from dreamsmith.errors import ConfigError, ModelLoadError
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.lora import lora_names
from dreamsmith.guidance.photomaker import load_photomaker

FACES = [np.random.default_rng(seed).random((40, 36, 3)).astype(np.float32) for seed in (0, 1)]


@pytest.fixture
def prior(tiny_sdxl_dir):
    return load_prior(tiny_sdxl_dir)  # fresh: PhotoMaker adds a LoRA and a prompt rewrite to it


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_sdxl_dir):
    state = photomaker_state(load_prior(tiny_sdxl_dir).unet)
    file = tmp_path_factory.mktemp("photomaker") / "photomaker-v1.bin"
    torch.save(state, file)
    return file


def plain(prior, prompt):
    return prior.text_condition(prior.encode_prompts([prompt]))[0]


def test_a_prompt_without_the_trigger_word_is_unchanged(prior, checkpoint):
    before = prior.encode_prompts(["a photo of a m, front view"])
    conditioner = load_photomaker(checkpoint, FACES[:1], prior, "a photo of a m", allow_pickle=True)
    after = prior.encode_prompts(["a photo of a m, front view"])
    assert torch.equal(before, after) and not prior.prompt_rewrites
    embeds, _ = prior.text_condition(after)
    context = ConditionContext(branch_labels=("cond",), timesteps=torch.tensor([100]))
    assert torch.equal(conditioner.transform_prompt_embeds(embeds, context), embeds)
    assert "photomaker" in lora_names(prior.unet)


@pytest.mark.parametrize("faces", [1, 2])
def test_with_the_trigger_word_only_the_class_token_positions_change(prior, checkpoint, faces):
    prompt = "a photo of a m img"
    conditioner = load_photomaker(checkpoint, FACES[:faces], prior, prompt, allow_pickle=True)
    assert conditioner.positions == list(range(len("aphotoofa") + 1, len("aphotoofa") + 1 + faces))
    clean = "a photo of a " + " ".join(["m"] * faces)
    for suffix in ("", ", side view"):  # view-dependent prompts keep the class token's place
        embeds = plain(prior, prompt + suffix)
        assert torch.equal(embeds, plain(prior, clean + suffix))  # the trigger word is written as the class word
        batch = embeds.repeat(3, 1, 1)
        context = ConditionContext(branch_labels=("cond", "cond", "uncond"), timesteps=torch.tensor([100, 900, 100]))
        fused = conditioner.transform_prompt_embeds(batch, context)
        changed = (fused != batch).any(-1)
        assert changed[0].nonzero().flatten().tolist() == conditioner.positions
        assert not changed[1].any()  # t = 900 is before start_merge_step (the first 20 % of the trajectory)
        assert not changed[2].any()  # the unconditional branch keeps its prompt


def test_fusion_follows_the_published_fuse_module(prior, checkpoint):
    """fuse(word, id) = LN(mlp2(mlp1([word, id]) + word)) with id = [proj(pooled), proj_2(pooled)], written here
    from the published module's equations on the checkpoint's tensors."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from dreamsmith.guidance.image_encoders import CLIPImageEncoder

    state = torch.load(checkpoint, weights_only=True)["id_encoder"]
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=32, patch_size=16, hidden_size=64,
                                                          intermediate_size=32, num_hidden_layers=1,
                                                          num_attention_heads=1, projection_dim=24))
    clip.load_state_dict({k: v for k, v in state.items() if k.startswith(("vision_model", "visual_projection."))})
    pooled = clip.vision_model(pixel_values=CLIPImageEncoder(clip).pixels(torch.tensor(FACES[0])[None]))[1]
    identity = torch.cat([clip.visual_projection(pooled), pooled @ state["visual_projection_2.weight"].T], -1)

    def mlp(x, name, residual):
        w = {k.removeprefix(f"fuse_module.{name}."): v for k, v in state.items() if k.startswith(f"fuse_module.{name}")}
        h = torch.nn.functional.layer_norm(x, x.shape[-1:], w["layernorm.weight"], w["layernorm.bias"])
        h = torch.nn.functional.gelu(h @ w["fc1.weight"].T + w["fc1.bias"]) @ w["fc2.weight"].T + w["fc2.bias"]
        return h + x if residual else h

    conditioner = load_photomaker(checkpoint, FACES[:1], prior, "a m img", allow_pickle=True)
    word = plain(prior, "a m")[0, conditioner.positions]
    expected = mlp(mlp(torch.cat([word, identity], -1), "mlp1", False) + word, "mlp2", True)
    expected = torch.nn.functional.layer_norm(expected, expected.shape[-1:], state["fuse_module.layer_norm.weight"],
                                              state["fuse_module.layer_norm.bias"])
    torch.testing.assert_close(conditioner.fused, expected, atol=1e-5, rtol=1e-5)


def test_its_lora_is_loaded_and_active_only_in_its_calls(prior, checkpoint):
    conditioner = load_photomaker(checkpoint, FACES[:1], prior, "a m img", allow_pickle=True)
    generator = torch.Generator().manual_seed(0)
    z, t = torch.randn(1, 4, 4, 4, generator=generator), torch.tensor([300])
    packed = prior.encode_prompts(["a m img"])
    base = prior.predict_noise(z, t, packed)
    assert (prior.predict_noise(z, t, packed, conditioners=[conditioner]) - base).abs().max() > 1e-4
    conditioner.lora_scale, conditioner.positions = 0.0, []
    assert torch.equal(prior.predict_noise(z, t, packed, conditioners=[conditioner]), base)


def test_bad_checkpoints_and_prompts_are_refused_in_one_line(tmp_path, prior, checkpoint, tiny_sd_prior):
    with pytest.raises(ConfigError, match="another base model: it fuses 64-wide text embeddings, the model's "
                                          "cross-attention reads 32"):
        load_photomaker(checkpoint, FACES[:1], tiny_sd_prior, "a m img", allow_pickle=True)
    state = torch.load(checkpoint, weights_only=True)
    state["id_encoder"]["fuse_module.extra"] = state["id_encoder"].pop("fuse_module.mlp2.fc1.bias")
    file = save_safetensors(state, tmp_path / "photomaker.safetensors")
    with pytest.raises(ModelLoadError) as error:
        load_photomaker(file, FACES[:1], prior, "a m img")
    assert "missing fuse_module.mlp2.fc1.bias; unexpected fuse_module.extra" in str(error.value)
    assert "\n" not in str(error.value)
    for prompt, message in [("a m img and a m img", "2 times"), ("a photo img", "not one word")]:
        with pytest.raises(ConfigError, match=message):
            load_photomaker(checkpoint, FACES[:1], prior, prompt, allow_pickle=True)


def test_its_lora_equals_diffusers_loading_the_same_published_keys(prior, checkpoint, tiny_sdxl_dir):
    """diffusers' ``load_lora_weights`` (what the published pipeline calls) reads the attention-processor keys
    itself: the oracle for the key conversion and the LoRA scale."""
    from diffusers import StableDiffusionXLPipeline

    state = torch.load(checkpoint, weights_only=True)
    conditioner = load_photomaker(checkpoint, FACES[:1], prior, "a m", allow_pickle=True)
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipeline.load_lora_weights(state["lora_weights"], adapter_name="photomaker")
    generator = torch.Generator().manual_seed(2)
    z, t = torch.randn(2, 4, 4, 4, generator=generator), torch.tensor([300, 600])
    packed = prior.encode_prompts(["a m", "a m"])
    hidden, kwargs = prior.text_condition(packed)
    with torch.no_grad():
        expected = pipeline.unet(z, t, encoder_hidden_states=hidden, **kwargs).sample
    ours = prior.predict_noise(z, t, packed, conditioners=[conditioner])
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)
    assert (ours - prior.predict_noise(z, t, packed)).abs().max() > 1e-4
