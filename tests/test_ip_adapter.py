"""IP-Adapter image prompts: published layouts, diffusers' own implementation as the oracle, the invariants."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from ip_adapter_states import plain_state, plus_state, save_safetensors, tiny_clip_vision

from dreamsmith.errors import ConfigError, DreamsmithError, ModelLoadError
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.ip_adapter import IPAdapterConditioner, cross_attention_layers
from dreamsmith.guidance.ip_adapter_loading import build_ip_adapter, image_prompt
from dreamsmith.guidance.loading import load_prior


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 4, 4, generator=generator), torch.tensor([500, 700]),
            torch.randn(2, 16, 32, generator=generator), generator)


def diffusers_unet(folder: Path, state: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    unet._load_ip_adapter_weights(copy.deepcopy(state))
    return unet


def test_published_numbering_counts_every_attention_layer():
    from conftest import tiny_unet

    numbers = list(cross_attention_layers(tiny_unet(4, 4)))
    assert numbers == ["1", "3", "5", "7"]  # attn1 of each block takes the even numbers, as in ip-adapter_sd15


@pytest.mark.parametrize("kind", ["plain", "plus"])
def test_equals_diffusers_ip_adapter_on_the_same_published_weights(kind, tiny_sd_dir, tiny_sd_prior, inputs):
    z, t, text, generator = inputs
    state = plain_state(tiny_sd_prior.unet) if kind == "plain" else plus_state(tiny_sd_prior.unet)
    embeds = torch.randn(2, 24, generator=generator) if kind == "plain" else torch.randn(2, 5, 16, generator=generator)
    adapter = build_ip_adapter(state, tiny_sd_prior.unet)
    assert adapter.reads_hidden_states == (kind == "plus")
    reference = diffusers_unet(tiny_sd_dir, state)
    with torch.no_grad():
        expected = reference(z, t, encoder_hidden_states=text,
                             added_cond_kwargs={"image_embeds": [embeds[:, None]]}).sample
        tokens = adapter.image_proj(embeds)
    ours = tiny_sd_prior.predict_noise(z, t, text, conditioners=[IPAdapterConditioner(adapter, tokens, tokens)])
    base = tiny_sd_prior.predict_noise(z, t, text)
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)
    assert (base - expected).abs().max() > 1e-2  # the image changes the prediction


def test_sdxl_adapter_equals_diffusers(tiny_sdxl_dir, inputs):
    z, t, _, generator = inputs
    prior = load_prior(tiny_sdxl_dir)
    state = plain_state(prior.unet, tokens=4, seed=3)
    adapter = build_ip_adapter(state, prior.unet)
    packed = prior.encode_prompts(["a red cube", "a blue sphere"])
    hidden, kwargs = prior.text_condition(packed)
    embeds = torch.randn(2, 24, generator=generator)
    reference = diffusers_unet(tiny_sdxl_dir, state)
    with torch.no_grad():
        expected = reference(z, t, encoder_hidden_states=hidden,
                             added_cond_kwargs={**kwargs["added_cond_kwargs"],
                                                "image_embeds": [embeds[:, None]]}).sample
        tokens = adapter.image_proj(embeds)
    ours = prior.predict_noise(z, t, packed, conditioners=[IPAdapterConditioner(adapter, tokens, tokens)])
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)


def test_scale_zero_is_the_base_model_bit_for_bit(tiny_sd_prior, inputs):
    z, t, text, generator = inputs
    adapter = build_ip_adapter(plain_state(tiny_sd_prior.unet), tiny_sd_prior.unet)
    tokens = adapter.image_proj(torch.randn(1, 24, generator=generator))
    off = IPAdapterConditioner(adapter, tokens, tokens, scale=0.0)
    base = tiny_sd_prior.predict_noise(z, t, text)
    assert torch.equal(tiny_sd_prior.predict_noise(z, t, text, conditioners=[off]), base)


def test_unconditional_branch_sees_the_zero_image_whatever_the_reference(tiny_sd_prior, inputs):
    """The zero image's tokens are not zeros (LayerNorm of the projection's bias), so the unconditional branch is
    not the base model; but it is the same for every reference image, and the conditional branch is not."""
    z, t, text, generator = inputs
    adapter = build_ip_adapter(plain_state(tiny_sd_prior.unet), tiny_sd_prior.unet)
    zero = adapter.image_proj(torch.zeros(1, 24))
    assert zero.abs().max() > 0.1
    context = ConditionContext(branch_labels=("cond", "uncond"))
    z1, t1, text1 = z[:1].repeat(2, 1, 1, 1), t[:1].repeat(2), text[:1].repeat(2, 1, 1)
    outputs = []
    for _ in range(2):
        tokens = adapter.image_proj(torch.randn(1, 24, generator=generator))
        conditioner = IPAdapterConditioner(adapter, tokens, zero)
        outputs.append(tiny_sd_prior.predict_noise(z1, t1, text1, conditioners=[conditioner], context=context))
    base = tiny_sd_prior.predict_noise(z1, t1, text1)
    assert torch.equal(outputs[0][1], outputs[1][1])
    assert (outputs[0][0] - outputs[1][0]).abs().max() > 1e-3
    assert (outputs[0][1] - base[1]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def published_folder(tmp_path_factory, tiny_sd_prior) -> Path:
    """h94/IP-Adapter's layout: models/ip-adapter_sd15.safetensors (and a .bin) beside models/image_encoder/."""
    folder = tmp_path_factory.mktemp("h94") / "models"
    tiny_clip_vision(folder / "image_encoder")
    state = plain_state(tiny_sd_prior.unet, seed=5)
    save_safetensors(state, folder / "ip-adapter_sd15.safetensors")
    torch.save(state, folder / "ip-adapter_sd15.bin")
    save_safetensors(plus_state(tiny_sd_prior.unet, seed=6), folder / "plus" / "ip-adapter-plus_sd15.safetensors")
    return folder


def test_loads_the_published_files_and_encodes_the_image_once(published_folder, tiny_sd_prior, inputs):
    z, t, text, _ = inputs
    red = np.zeros((40, 48, 3), np.float32)
    red[..., 0] = 1.0
    conditioner = image_prompt(published_folder / "ip-adapter_sd15.safetensors", red, tiny_sd_prior)
    assert conditioner.image_tokens.shape == (1, 4, 32)
    pickled = image_prompt(published_folder / "ip-adapter_sd15.bin", red, tiny_sd_prior, allow_pickle=True)
    torch.testing.assert_close(pickled.image_tokens, conditioner.image_tokens, atol=0, rtol=0)
    with pytest.raises(ModelLoadError, match="pickled"):
        image_prompt(published_folder / "ip-adapter_sd15.bin", red, tiny_sd_prior)
    plus = image_prompt(published_folder / "plus" / "ip-adapter-plus_sd15.safetensors", red, tiny_sd_prior,
                        image_encoder=published_folder / "image_encoder")
    assert plus.adapter.reads_hidden_states and plus.image_tokens.shape == (1, 6, 32)
    assert not torch.allclose(plus.zero_tokens, plus.image_tokens)
    out = tiny_sd_prior.predict_noise(z, t, text, conditioners=[conditioner])
    assert (out - tiny_sd_prior.predict_noise(z, t, text)).abs().max() > 1e-3


def test_an_adapter_for_another_base_model_is_refused_in_one_line(published_folder, tiny_sdxl_dir):
    prior = load_prior(tiny_sdxl_dir)  # cross-attention 64 wide; the adapter's tokens are 32
    with pytest.raises(ConfigError, match="another base model: its image tokens are 32 wide"):
        image_prompt(published_folder / "ip-adapter_sd15.safetensors", np.ones((16, 16, 3), np.float32), prior)


def test_an_encoder_of_another_width_is_refused(tmp_path, published_folder, tiny_sd_prior):
    state = plain_state(tiny_sd_prior.unet, image_dim=40)
    file = save_safetensors(state, tmp_path / "ip-adapter.safetensors")
    with pytest.raises(ConfigError, match="reads 40-wide image embeddings, its image encoder gives 24"):
        image_prompt(file, np.ones((16, 16, 3), np.float32), tiny_sd_prior,
                     image_encoder=published_folder / "image_encoder")
    with pytest.raises(ModelLoadError, match="needs its image encoder"):
        image_prompt(file, np.ones((16, 16, 3), np.float32), tiny_sd_prior)


def test_bad_reference_images_are_refused_in_one_line(tmp_path):
    from PIL import Image

    from dreamsmith.image_files import check_image, read_image

    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("L", (10000, 10000)).save(tmp_path / "huge.png")
    Image.new("RGBA", (16, 12), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    for name, message in [("text.png", "not a readable image"), ("dot.png", "1×1: too small"),
                          ("huge.png", "10000×10000, more than"), ("missing.png", "does not exist")]:
        with pytest.raises(DreamsmithError, match=message) as error:
            check_image(tmp_path / name)
        assert "\n" not in str(error.value)
    assert np.allclose(read_image(tmp_path / "clear.png"), 1.0)  # transparent -> the white background


def test_clip_preprocessing_matches_the_clip_image_processor():
    """Resize of the shorter side, centre crop and CLIP's normalisation as transformers does them (PIL's bicubic
    on uint8 against ours on floats: rounding apart; a wrong crop or normalisation would be far off)."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from dreamsmith.guidance.image_encoders import CLIPImageEncoder

    noise = (np.random.default_rng(0).random((75, 100, 3)) * 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(noise).resize((400, 300), Image.BILINEAR))
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    expected = processor(images=Image.fromarray(image), return_tensors="pt").pixel_values
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=16,
                                                           intermediate_size=32, num_hidden_layers=1,
                                                           num_attention_heads=2, projection_dim=8))
    ours = CLIPImageEncoder(model).pixels(torch.tensor(image / 255.0, dtype=torch.float32)[None])
    assert ours.shape == expected.shape == (1, 3, 224, 224)
    assert (ours - expected).abs().mean() < 0.05
    assert (ours - expected.flip(-1)).abs().mean() > 0.2  # the comparison can tell a wrong layout
