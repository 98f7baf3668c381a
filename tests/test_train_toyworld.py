"""The toyworld training script end to end on a tiny run: the saved folder loads back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel

from dreamsmith.toyworld import world as tw
from dreamsmith.toyworld.data import generate_toyworld_dataset

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str = "train_toyworld"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toyworld") / "model"
    argv = ["--out", str(out), "--state-dir", str(out.parent / "state"), "--resolution", "16", "--steps", "3",
            "--batch-size", "4", "--n-images", "64", "--channels", "8,16,16", "--threads", "1",
            "--checkpoint-every", "2"]
    return out, _load_script().main(argv)


def test_dataset_uses_only_training_captions_and_white_background() -> None:
    data = generate_toyworld_dataset(200, resolution=16, seed=3)
    assert data.images.shape == (200, 16, 16, 3) and data.images.dtype == torch.uint8
    assert data.c2w.shape == (200, 4, 4)
    assert int(data.caption_index.max()) < len(tw.TRAIN_CAPTIONS)
    assert not set(data.captions(torch.arange(200))) & set(tw.HELD_OUT_CAPTIONS)
    assert (data.images[:, 0, 0] == 255).all()  # corners are background
    assert torch.allclose(data.c2w[:, :3, 3].norm(dim=-1), torch.full((200,), 2.0), atol=1e-5)
    again = generate_toyworld_dataset(200, resolution=16, seed=3)
    assert torch.equal(again.images, data.images) and torch.equal(again.c2w, data.c2w)


def test_training_logs_every_step_and_saves_all_parts(trained: tuple[Path, dict]) -> None:
    out, log = trained
    assert len(log["losses"]) == 3 and all(loss > 0 for loss in log["losses"])
    for part in ("unet", "text_encoder", "tokenizer", "scheduler", "model_index.json", "dreamsmith.json"):
        assert (out / part).exists(), part
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    config = json.loads((out / "dreamsmith.json").read_text())
    assert config["camera_conditioning"] == "c2w16" and config["camera_distance"] == 2.0
    assert config["resolution"] == 16 and len(config["known_prompts"]) == 48


def test_saved_model_reloads_in_fp32_and_predicts_noise(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    unet = UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(out / "text_encoder", torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.num_train_timesteps == 1000 and scheduler.config.prediction_type == "epsilon"
    assert unet.dtype == torch.float32 and unet.config.projection_class_embeddings_input_dim == 16
    ids = tokenizer(["an orange cone", "a orange cone", ""], padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    assert ids.shape == (3, 6)
    assert tokenizer.unk_token_id not in ids.tolist()[0]
    assert ids[0, 2:].tolist() == ids[1, 2:].tolist()  # only the article differs
    text = text_encoder(ids).last_hidden_state
    eps = unet(torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 999]), encoder_hidden_states=text,
               class_labels=torch.zeros(3, 16)).sample
    assert eps.shape == (3, 3, 16, 16) and torch.isfinite(eps).all()


def test_resume_continues_from_the_checkpoint(trained: tuple[Path, dict], tmp_path: Path) -> None:
    out, log = trained
    argv = ["--out", str(out), "--state-dir", str(out.parent / "state"), "--resolution", "16", "--steps", "4",
            "--batch-size", "4", "--n-images", "64", "--channels", "8,16,16", "--threads", "1", "--resume"]
    resumed = _load_script().main(argv)
    assert len(resumed["losses"]) == 4 and resumed["losses"][:3] == log["losses"]


def test_camera_condition_scales_translation_only() -> None:
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[:, :3, 3] = torch.tensor([0.0, 0.0, 2.0])
    cond = _load_script().camera_condition(c2w)
    assert cond.shape == (2, 16) and cond[0, 11].item() == 1.0 and cond[0, 0].item() == 1.0


def test_ray_channels_start_as_the_old_model(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    script = _load_script()
    old = UNet2DConditionModel.from_pretrained(out / "unet", torch_dtype=torch.float32)
    new, _ = script.load_init(out, camera_rays=True)
    assert new.config.in_channels == 9
    generator = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 3, 16, 16, generator=generator), torch.randn(2, 6, 64, generator=generator)
    t, camera = torch.tensor([100, 700]), torch.randn(2, 16, generator=generator)
    rays = script.camera_rays(torch.eye(4).repeat(2, 1, 1) + 0.1, 16)
    with torch.no_grad():
        before = old(x, t, encoder_hidden_states=text, class_labels=camera).sample
        after = new(torch.cat([x, rays], 1), t, encoder_hidden_states=text, class_labels=camera).sample
    torch.testing.assert_close(after, before)


def test_fine_tuning_with_rays_saves_a_ray_conditioned_prior(trained: tuple[Path, dict], tmp_path: Path) -> None:
    from dreamsmith.guidance.loading import load_prior

    out, _ = trained
    tuned = tmp_path / "tuned"
    argv = ["--out", str(tuned), "--state-dir", str(tmp_path / "state"), "--resolution", "16", "--steps", "2",
            "--batch-size", "4", "--n-images", "64", "--threads", "1", "--init-from", str(out), "--camera-rays",
            "--elevation-range", "-10", "80"]
    log = _load_script().main(argv)
    assert log["camera_rays"] and log["elevation_range"] == [-10.0, 80.0] and len(log["losses"]) == 2
    config = json.loads((tuned / "dreamsmith.json").read_text())
    assert config["camera_conditioning"] == "c2w16+rays" and config["elevation_range"] == [-10.0, 80.0]
    prior = load_prior(tuned)
    assert prior.latent_channels == 3 and prior.unet.config.in_channels == 9


def test_truncated_snr_weights_favour_high_noise_up_to_the_cap() -> None:
    script = _load_script()
    alphas_cumprod = script.build_scheduler().alphas_cumprod
    plain = script.loss_weights(alphas_cumprod, 1.0)
    assert torch.equal(plain, torch.ones(1000))
    capped = script.loss_weights(alphas_cumprod, 10.0)
    assert capped[0] == 1.0 and capped[-1] == 10.0 and bool((capped.diff() >= 0).all())
    snr = alphas_cumprod[900] / (1 - alphas_cumprod[900])  # 1/SNR = 40 at t = 900 on the cosine schedule
    assert script.loss_weights(alphas_cumprod, 1000.0)[900] == pytest.approx(float(1 / snr))


def test_oversampling_and_high_timesteps_shift_the_draws() -> None:
    script = _load_script()
    data = generate_toyworld_dataset(600, resolution=8, seed=1)
    weights = script.sampling_weights(data, "cube=3")
    is_cube = torch.tensor(["cube" in c for c in data.captions(torch.arange(600))])
    assert bool((weights[is_cube] == 3).all()) and bool((weights[~is_cube] == 1).all())
    assert script.sampling_weights(data, "") is None
    generator = torch.Generator().manual_seed(0)
    t = script.sample_timesteps(4000, 1000, 0.5, generator)
    assert 0.6 < float((t >= 700).float().mean()) < 0.7  # 0.5 + 0.5 * 0.3
    assert int(t.min()) >= 0 and int(t.max()) < 1000


def _spherical(c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(azimuth, elevation) in degrees of cameras ``c2w [N, 4, 4]`` (azimuth 0 on +Z, towards +X)."""
    position = c2w[:, :3, 3]
    azimuth = torch.rad2deg(torch.atan2(position[:, 0], position[:, 2]))
    elevation = torch.rad2deg(torch.asin(position[:, 1] / position.norm(dim=-1)))
    return azimuth, elevation


def test_groups_are_one_caption_seen_from_four_azimuths_90_degrees_apart() -> None:
    data = generate_toyworld_dataset(83, resolution=16, seed=2, elevation_range=(-10, 80), views_per_group=4)
    assert len(data) == 80  # whole groups only
    groups = data.caption_index.view(20, 4)
    assert bool((groups == groups[:, :1]).all()) and groups[:, 0].unique().numel() > 5
    azimuth, elevation = (v.view(20, 4) for v in _spherical(data.c2w))
    torch.testing.assert_close(elevation, elevation[:, :1].expand(20, 4), atol=1e-3, rtol=0)
    assert float(elevation.min()) >= -10.001 and float(elevation.max()) <= 80.001 and elevation[:, 0].std() > 10
    steps = (azimuth.diff(dim=1) % 360).flatten()
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0), atol=1e-2, rtol=0)
    torch.testing.assert_close(data.c2w[:, :3, 3].norm(dim=-1), torch.full((80,), 2.0))
    views = data.images.view(20, 4, 16, 16, 3).float()
    # every toyworld shape is symmetric under a quarter turn about +Y: a group's views are one picture
    assert float((views - views[:, :1]).abs().mean()) < 0.5
    assert float((views[1:, 0] - views[:-1, 0]).abs().mean()) > 5  # other groups, other pictures


def test_a_multi_view_batch_keeps_each_group_whole() -> None:
    script = _load_script()
    data = generate_toyworld_dataset(400, resolution=8, seed=1, views_per_group=4)
    tokenizer = script.build_tokenizer()
    generator = torch.Generator().manual_seed(0)
    inputs, ids, camera = script.training_batch(data, tokenizer, 64, generator, with_rays=True, text_dropout=0.5,
                                                camera_dropout=0.5, views_per_group=4)
    assert inputs.shape == (64, 9, 8, 8) and ids.shape == (64, 6) and camera.shape == (64, 16)
    ids, camera, rays = ids.view(16, 4, 6), camera.view(16, 4, 16), inputs[:, 3:].view(16, 4, -1)
    assert bool((ids == ids[:, :1]).all())  # one caption, dropped or kept and its article swapped as one
    dropped_text = ids[:, 0, 1] == tokenizer.eos_token_id  # "" is [BOS] [EOS] and padding
    dropped_camera = (camera == 0).all(-1)
    assert bool((dropped_camera == dropped_camera[:, :1]).all())
    assert bool(((rays == 0).all(-1) == dropped_camera).all())  # rays dropped with the labels
    assert 0 < int(dropped_camera[:, 0].sum()) < 16 and 0 < int(dropped_text.sum()) < 16
    kept = ~dropped_camera[:, 0]
    azimuth, _ = _spherical(_camera_c2w(camera[kept].reshape(-1, 16)))
    steps = azimuth.view(-1, 4).diff(dim=1) % 360
    torch.testing.assert_close(steps, torch.full_like(steps, 90.0), atol=1e-2, rtol=0)


def _camera_c2w(labels: torch.Tensor) -> torch.Tensor:
    """c2w ``[N, 4, 4]`` back from c2w16 labels (translation times the camera distance 2)."""
    c2w = labels.view(-1, 4, 4).clone()
    c2w[:, :3, 3] *= 2.0
    return c2w


def test_multi_view_fine_tuning_folds_groups_and_ships_the_unet_over_its_base(trained: tuple[Path, dict],
                                                                              tmp_path: Path) -> None:
    from dreamsmith.guidance.loading import load_prior

    script = _load_script()
    seen: list[tuple[int, ...]] = []

    class Recording(script.MultiViewAttention):
        def hidden_states(self, attn, hidden_states, context):
            folded = super().hidden_states(attn, hidden_states, context)
            seen.append((hidden_states.shape[0], folded.shape[0]))
            return folded

    script.MultiViewAttention = Recording
    base, _ = trained
    tuned = tmp_path / "models" / "tuned"
    argv = ["--out", str(tuned), "--state-dir", str(tmp_path / "state"), "--resolution", "16", "--steps", "2",
            "--batch-size", "8", "--n-images", "64", "--threads", "1", "--init-from", str(base), "--camera-rays",
            "--views-per-group", "4", "--freeze-text-encoder", "--lr", "1e-2"]
    log = script.main(argv)
    assert log["views_per_group"] == 4 and len(log["losses"]) == 2
    assert seen and set(seen) == {(8, 2)}  # every self-attention saw 2 groups of 4 views as 2 sequences
    config = json.loads((tuned / "dreamsmith.json").read_text())
    assert config["attention"] == "multiview" and config["views_per_group"] == 4
    assert (tuned / config["base"]).resolve() == base.resolve()
    assert sorted(p.name for p in tuned.iterdir()) == ["dreamsmith.json", "model_index.json", "train_log.json",
                                                       "unet"]
    prior, base_prior = load_prior(tuned), load_prior(base)
    assert prior.views_per_group == 4 and prior.camera_conditioning == "c2w16+rays"
    for name, p in base_prior.text_encoder.state_dict().items():
        assert torch.equal(prior.text_encoder.state_dict()[name], p), name
    tuned_unet = prior.unet.state_dict()
    changed = [name for name, p in base_prior.unet.state_dict().items()
               if not name.startswith("conv_in") and not torch.equal(tuned_unet[name], p)]
    assert changed  # the UNet trained (conv_in aside, which gained the ray channels)


@pytest.mark.parametrize(("extra", "message"), [
    (["--batch-size", "6", "--views-per-group", "4"], "whole number of groups"),
    (["--views-per-group", "0"], "whole number of groups"),
    (["--freeze-text-encoder"], "--freeze-text-encoder needs --init-from"),
])
def test_bad_multi_view_options_are_refused_in_one_line(extra: list[str], message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _load_script().parse_args(["--batch-size", "8", *extra])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
