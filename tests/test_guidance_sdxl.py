"""SDXL base and refiner as priors: tiny random pipelines saved by diffusers' own pipeline classes and
loaded offline; ε matches the UNet called the way diffusers' SDXL pipelines call it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_guidance_contract import gradient, make

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance import GUIDANCES
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.sdxl import SDXLPrior


def _pipeline_eps(folder, refiner: bool, prompt: str, z, t):
    """ε from diffusers' own pipeline: its encode_prompt, its added time ids, its UNet call."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLImg2ImgPipeline if refiner else StableDiffusionXLPipeline
    pipe = cls.from_pretrained(folder)
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    size = (pipe.unet.config.sample_size * pipe.vae_scale_factor,) * 2
    dim = pipe.text_encoder_2.config.projection_dim
    if refiner:
        ids, _ = pipe._get_add_time_ids(size, (0, 0), size, 6.0, 2.5, size, (0, 0), size, torch.float32, dim)
    else:
        ids = pipe._get_add_time_ids(size, (0, 0), size, torch.float32, dim)
    n = len(z)
    with torch.no_grad():
        return pipe.unet(z, t, encoder_hidden_states=embeds.expand(n, -1, -1),
                         added_cond_kwargs={"text_embeds": pooled.expand(n, -1), "time_ids": ids.expand(n, -1)}).sample


@pytest.mark.parametrize("refiner", [False, True])
def test_eps_matches_diffusers_sdxl_pipelines(refiner, tiny_sdxl_dir, tiny_refiner_dir):
    folder = tiny_refiner_dir if refiner else tiny_sdxl_dir
    prior = load_prior(folder)
    assert isinstance(prior, SDXLPrior) and prior.family == ("sdxl-refiner" if refiner else "sdxl")
    assert len(prior.encoders) == (1 if refiner else 2) and prior.latent_channels == 4
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    embeds = prior.encode_prompts(["a red cube"])
    ours = prior.predict_noise(z, t, embeds)
    theirs = _pipeline_eps(folder, refiner, "a red cube", z, 500)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    other = prior.predict_noise(z, t, prior.encode_prompts(["a blue torus"]))
    assert (other - ours).abs().max() > 1e-4  # the text (and pooled text) reaches the UNet


def test_empty_prompt_is_zero_for_the_base_and_encoded_for_the_refiner(tiny_sdxl_dir, tiny_refiner_dir):
    base, refiner = load_prior(tiny_sdxl_dir), load_prior(tiny_refiner_dir)
    assert torch.count_nonzero(base.encode_prompts([""])) == 0  # force_zeros_for_empty_prompt
    assert torch.count_nonzero(base.encode_prompts(["a cube"])) > 0
    assert torch.count_nonzero(refiner.encode_prompts([""])) > 0  # the refiner's index turns it off


@pytest.mark.parametrize("folder", ["tiny_sdxl_dir", "tiny_refiner_dir"])
def test_every_guidance_distils_through_sdxl_models(folder, request):
    prior = load_prior(request.getfixturevalue(folder))
    # multi-view ones need a multi-view model, source-image ones (ip2p) an image-conditioned UNet
    single_view = [name for name in sorted(GUIDANCES)
                   if GUIDANCES[name].views_per_group == 1 and not GUIDANCES[name].needs_source]
    assert {"sds", "vsd", "dreamflow", "p2p"} <= set(single_view)
    for name in single_view:
        options = {"schedule_steps": 8, "levels": 4, "t_start": 0.3, "t_end": 0.0} if name == "dreamflow" else {}
        grad, _ = gradient(make(name, prior, **options), seed=3)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_an_sdxl_unet_without_its_second_encoder_is_one_line(tiny_sdxl_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sdxl_dir, broken)
    shutil.rmtree(broken / "text_encoder_2")
    index = json.loads((broken / "model_index.json").read_text())
    index["text_encoder_2"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="SDXL-shaped") as error:
        load_prior(broken)
    assert "\n" not in str(error.value)


def test_an_sdxl_refiner_as_the_particle_model_of_an_sd_stage_is_one_line(tiny_sd_dir, tiny_refiner_dir):
    from dreamsmith.errors import ConfigError

    with pytest.raises(ConfigError, match="sdxl-refiner.*same family") as error:
        make("vsd", load_prior(tiny_sd_dir), lora_model=str(tiny_refiner_dir))
    assert "\n" not in str(error.value)
