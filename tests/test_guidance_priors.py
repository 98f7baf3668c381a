"""Loading diffusers folders and hub ids into a DiffusionPrior, and what the prior computes."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.priors import DiffusionPrior, c2w16_labels
from dreamsmith.renderers.cameras import Cameras


def frozen(module: torch.nn.Module) -> bool:
    return not module.training and not any(p.requires_grad for p in module.parameters())


def test_tiny_sd_loads_as_a_frozen_latent_epsilon_prior(tiny_sd_prior):
    prior = tiny_sd_prior
    assert (prior.prediction_type, prior.is_latent, prior.image_size, prior.latent_channels) == (
        "epsilon",
        True,
        32,
        4,
    )
    assert prior.image_size == prior.vae.config.sample_size
    assert prior.num_train_timesteps == 1000
    assert prior.dtype == torch.float32 and prior.device == torch.device("cpu")
    assert torch.equal(prior.alphas_cumprod, prior.scheduler.alphas_cumprod.float())
    assert prior.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, abs=1e-6)
    assert all(frozen(m) for m in (prior.unet, prior.vae, prior.text_encoder))
    assert (prior.known_prompts, prior.metadata, prior.camera_conditioning) == (None, {}, None)


def test_prompts_encode_to_padded_last_hidden_states(tiny_sd_prior):
    embeds = tiny_sd_prior.encode_prompts(["a hamburger", "a very long prompt " * 10])
    assert embeds.shape == (2, 16, 32)
    assert not embeds.requires_grad
    assert not torch.allclose(embeds[0], embeds[1])
    torch.testing.assert_close(
        embeds[:1], tiny_sd_prior.encode_prompts(["a hamburger"]), atol=1e-5, rtol=1e-5
    )


def test_images_encode_through_the_vae_differentiably(tiny_sd_prior):
    prior = tiny_sd_prior
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    z = prior.encode_images(rgb, torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 4, 4)
    z.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    mean = prior.encode_images(rgb, sample=False)
    x = torch.nn.functional.interpolate(rgb.detach().permute(0, 3, 1, 2), size=(32, 32), mode="bilinear")
    expected = prior.vae.encode(2 * x - 1).latent_dist.mean * prior.vae.config.scaling_factor
    torch.testing.assert_close(mean, expected)
    again = prior.encode_images(rgb, torch.Generator().manual_seed(0))
    assert torch.equal(z, again)
    decoded = prior.decode_latents(z)
    assert decoded.shape == (2, 32, 32, 3)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_epsilon_prediction_is_the_raw_unet_output(tiny_sd_prior):
    prior = tiny_sd_prior
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(3, 4, 4, 4, generator=generator)
    t = torch.tensor([10, 500, 900])
    embeds = prior.encode_prompts(["a cat"])
    eps = prior.predict_noise(z_t, t, embeds)
    assert eps.shape == (3, 4, 4, 4) and not eps.requires_grad
    raw = prior.unet(z_t, t, encoder_hidden_states=embeds.expand(3, -1, -1)).sample
    torch.testing.assert_close(eps, raw)
    assert torch.equal(prior.predict_noise(z_t, 500, embeds)[1], eps[1])


def test_v_prediction_is_converted_to_epsilon(tiny_sd_vpred_prior):
    prior = tiny_sd_vpred_prior
    assert prior.prediction_type == "v_prediction"
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(2, 4, 4, 4, generator=generator)
    t = torch.tensor([100, 700])
    embeds = prior.encode_prompts(["a cat", "a dog"])
    v = prior.unet(z_t, t, encoder_hidden_states=embeds).sample
    alpha_bar = prior.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    by_hand = alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * z_t
    torch.testing.assert_close(prior.predict_noise(z_t, t, embeds), by_hand)


def test_pixel_prior_reads_its_metadata(tiny_pixel_prior):
    prior = tiny_pixel_prior
    assert (prior.is_latent, prior.vae, prior.image_size, prior.latent_channels) == (False, None, 8, 3)
    assert prior.camera_conditioning == "c2w16" and prior.camera_distance == 2.0
    assert prior.known_prompts == ["a red cube", "a blue sphere"]
    assert prior.metadata["fovy_deg"] == 40.0 and prior.metadata["elevation_range"] == [-10.0, 45.0]
    rgb = torch.rand(2, 16, 16, 3)
    z = prior.encode_images(rgb)
    expected = 2 * torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(8, 8), mode="bilinear") - 1
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(prior.decode_latents(z), (z.permute(0, 2, 3, 1) + 1) / 2)


def test_camera_labels_are_c2w_rows_with_unit_distance():
    cameras = Cameras.from_spherical(
        torch.tensor([0.0, 90.0]), torch.tensor(30.0), torch.tensor(2.0), torch.tensor(40.0), 8
    )
    labels = c2w16_labels(cameras.c2w, camera_distance=2.0)
    assert labels.shape == (2, 16)
    translation = labels[:, [3, 7, 11]]
    torch.testing.assert_close(translation.norm(dim=-1), torch.ones(2))
    assert torch.equal(labels[:, :3], cameras.c2w[:, 0, :3])
    assert labels[:, 12:].tolist() == [[0.0, 0.0, 0.0, 1.0]] * 2


def test_cameras_condition_the_pixel_prior(tiny_pixel_prior):
    prior = tiny_pixel_prior
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(2, 3, 8, 8, generator=generator)
    t = torch.tensor([300, 300])
    embeds = prior.encode_prompts(["a red cube"])
    cameras = Cameras.from_spherical(
        torch.tensor(45.0), torch.tensor(20.0), torch.tensor(2.0), torch.tensor(40.0), 8
    )
    with_camera = prior.predict_noise(z_t, t, embeds, cameras=cameras)
    without = prior.predict_noise(z_t, t, embeds)
    raw_zero = prior.unet(
        z_t, t, encoder_hidden_states=embeds.expand(2, -1, -1), class_labels=torch.zeros(2, 16)
    ).sample
    raw_camera = prior.unet(
        z_t,
        t,
        encoder_hidden_states=embeds.expand(2, -1, -1),
        class_labels=c2w16_labels(cameras.c2w, 2.0).expand(2, -1),
    ).sample
    assert torch.equal(without, raw_zero)
    assert torch.equal(with_camera, raw_camera)
    assert (with_camera - without).abs().max() > 1e-4


def test_plucker_map_is_unit_directions_and_their_moments():
    cameras = Cameras.from_spherical(
        torch.tensor([0.0, 120.0]), torch.tensor([20.0, 70.0]), torch.tensor(2.0), torch.tensor(40.0), 9
    )
    rays = cameras.plucker_map(distance_scale=2.0)
    assert rays.shape == (2, 6, 9, 9)
    direction, moment = rays[:, :3], rays[:, 3:]
    torch.testing.assert_close(direction.norm(dim=1), torch.ones(2, 9, 9))
    torch.testing.assert_close((direction * moment).sum(1), torch.zeros(2, 9, 9), atol=1e-6, rtol=0)
    # the centre pixel's ray passes through the origin the cameras look at: no moment
    assert moment[:, :, 4, 4].abs().max() < 1e-5 and moment[:, :, 0, 0].abs().max() > 0.1
    origin = cameras.position / 2.0
    expected = torch.cross(origin[:, :, None, None].expand_as(direction), direction, dim=1)
    torch.testing.assert_close(moment, expected)
    dropped = Cameras(torch.zeros(1, 4, 4), torch.tensor([40.0]), *torch.zeros(2, 1), torch.tensor([2.0]), 9, 9)
    assert torch.equal(dropped.plucker_map(2.0), torch.zeros(1, 6, 9, 9))  # a dropped camera: no rays


def test_ray_conditioned_prior_reads_the_plucker_map_after_the_image(tiny_pixel_rays_dir):
    prior = load_prior(tiny_pixel_rays_dir)
    assert prior.camera_conditioning == "c2w16+rays" and prior.latent_channels == 3
    assert prior.unet.config.in_channels == 9
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(4, 3, 8, 8, generator=generator)
    t = torch.tensor([300, 300, 600, 600])
    embeds = prior.encode_prompts(["a red cube"])
    cameras = Cameras.from_spherical(
        torch.tensor([45.0, 200.0]), torch.tensor([20.0, 60.0]), torch.tensor(2.0), torch.tensor(40.0), 64
    )
    labels = c2w16_labels(cameras.c2w, 2.0).repeat(2, 1)
    rays = cameras.with_resolution(8).plucker_map(2.0).repeat(2, 1, 1, 1)  # two cameras tiled over 4
    raw = prior.unet(torch.cat([z_t, rays], 1), t, encoder_hidden_states=embeds.expand(4, -1, -1),
                     class_labels=labels).sample
    eps = prior.predict_noise(z_t, t, embeds, cameras=cameras)
    assert eps.shape == z_t.shape
    torch.testing.assert_close(eps, raw)
    dropped = prior.unet(torch.cat([z_t, torch.zeros(4, 6, 8, 8)], 1), t,
                         encoder_hidden_states=embeds.expand(4, -1, -1), class_labels=torch.zeros(4, 16)).sample
    torch.testing.assert_close(prior.predict_noise(z_t, t, embeds), dropped)


def test_ray_conditioning_needs_the_ray_channels(tiny_pixel_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pixel_dir, folder)
    metadata = json.loads((folder / "dreamsmith.json").read_text())
    (folder / "dreamsmith.json").write_text(json.dumps({**metadata, "camera_conditioning": "c2w16+rays"}))
    with pytest.raises(ModelLoadError, match="6 ray input channels"):
        load_prior(folder)


def test_sample_prediction_is_refused(tiny_sd_prior):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(prediction_type="sample")
    with pytest.raises(ModelLoadError, match="'sample'"):
        DiffusionPrior(
            tiny_sd_prior.unet,
            scheduler,
            tiny_sd_prior.text_encoder,
            tiny_sd_prior.tokenizer,
            vae=tiny_sd_prior.vae,
        )


def test_pickled_weights_are_refused_unless_allowed(pickled_sd_dir, tiny_sd_prior):
    with pytest.raises(ModelLoadError, match="allow_pickle") as error:
        load_prior(pickled_sd_dir)
    assert "diffusion_pytorch_model.bin" in str(error.value)
    prior = load_prior(pickled_sd_dir, allow_pickle=True)
    for name, parameter in prior.unet.state_dict().items():
        assert torch.equal(parameter, tiny_sd_prior.unet.state_dict()[name]), name


def test_fp16_only_weights_load_into_fp32_on_cpu(tiny_sd_dir, tiny_sd_prior, tmp_path):
    folder = tmp_path / "fp16-sd"
    shutil.copytree(tiny_sd_dir, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    save_file(
        {k: v.half() for k, v in load_file(weights).items()},
        folder / "unet" / "diffusion_pytorch_model.fp16.safetensors",
    )
    weights.unlink()
    prior = load_prior(folder)
    assert prior.dtype == torch.float32 and prior.unet.dtype == torch.float32
    original = tiny_sd_prior.unet.state_dict()
    for name, parameter in prior.unet.state_dict().items():
        assert torch.equal(parameter, original[name].half().float()), name


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist") as error:
        load_prior(missing)
    assert str(missing) in str(error.value)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_prior(str(missing))


def test_folder_without_index_or_unet_is_refused(tiny_sd_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json") as error:
        load_prior(empty)
    assert str(empty) in str(error.value)
    no_unet = tmp_path / "no-unet"
    shutil.copytree(tiny_sd_dir, no_unet, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(ModelLoadError, match="unet") as error:
        load_prior(no_unet)
    assert str(no_unet) in str(error.value)


def test_foreign_component_library_is_refused(tiny_sd_dir, tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_sd_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["mv_unet", "MultiViewUNetModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="mv_unet"):
        load_prior(folder)


def test_uncached_hub_id_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as error:
        load_prior("dreamsmith-tests/not-a-cached-model")
    assert time.perf_counter() - start < 5.0
    message = str(error.value)
    assert "dreamsmith-tests/not-a-cached-model" in message
    assert "huggingface-cli download dreamsmith-tests/not-a-cached-model" in message
    assert "local diffusers model folder" in message


def _delta_of(base, folder, unet_shift: float = 0.5):
    """``folder``: ``base``'s UNet with its output bias shifted, index and dreamsmith.json, naming ``base``."""
    folder.mkdir()
    shutil.copytree(base / "unet", folder / "unet")
    weights = next((folder / "unet").glob("*.safetensors"))
    state = load_file(weights)
    state["conv_out.bias"] = state["conv_out.bias"] + unet_shift
    save_file(state, weights)
    shutil.copy2(base / "model_index.json", folder / "model_index.json")
    metadata = json.loads((base / "dreamsmith.json").read_text())
    (folder / "dreamsmith.json").write_text(json.dumps({**metadata, "base": f"../{base.name}"}))
    return folder


def test_a_folder_with_a_base_takes_the_components_it_lacks_from_the_base(tiny_pixel_dir):
    delta = _delta_of(tiny_pixel_dir, tiny_pixel_dir.parent / "delta")
    base, tuned = load_prior(tiny_pixel_dir), load_prior(delta)
    for name, p in base.text_encoder.state_dict().items():
        assert torch.equal(tuned.text_encoder.state_dict()[name], p), name
    assert tuned.tokenizer("a red cube").input_ids == base.tokenizer("a red cube").input_ids
    assert torch.equal(tuned.alphas_cumprod, base.alphas_cumprod)
    z_t, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    embeds = base.encode_prompts(["a red cube", ""])
    shift = tuned.predict_noise(z_t, t, embeds) - base.predict_noise(z_t, t, embeds)
    torch.testing.assert_close(shift, torch.full_like(shift, 0.5))  # its own UNet, not the base's
    assert tuned.camera_conditioning == base.camera_conditioning


def test_a_base_that_is_not_a_model_folder_is_refused_in_one_line(tiny_pixel_dir, tmp_path):
    delta = _delta_of(tiny_pixel_dir, tmp_path / "delta")  # ../<base name> does not exist beside it
    with pytest.raises(ModelLoadError, match="its base") as error:
        load_prior(delta)
    assert "\n" not in str(error.value) and "not a diffusers model folder" in str(error.value)
    metadata = json.loads((delta / "dreamsmith.json").read_text())
    (delta / "dreamsmith.json").write_text(json.dumps({**metadata, "base": 3}))
    with pytest.raises(ModelLoadError, match="base must be the path of a model folder"):
        load_prior(delta)


def test_a_component_in_neither_folder_names_both(tiny_pixel_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_pixel_dir, base, ignore=shutil.ignore_patterns("scheduler"))
    delta = _delta_of(base, tmp_path / "delta")
    with pytest.raises(ModelLoadError, match="has no scheduler/ folder") as error:
        load_prior(delta)
    assert str(delta) in str(error.value) and str(base) in str(error.value)
