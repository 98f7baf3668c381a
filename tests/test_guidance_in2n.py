"""Instruct-NeRF2NeRF (guidance.name=in2n): its DDIM edit is the prior's own DDIM sampler at unit scales, the
dataset update replaces one view in turn every N steps, and the dataset survives a kill and --resume."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.edit_config import EditRequest, edit_config
from dreamsmith.engine.edit_source import run_edit
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import generate
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.in2n import IN2NConfig, IN2NGuidance
from dreamsmith.guidance.ip2p import SourceImageLatents
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.math import photometric_loss, sample_timesteps
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.guidance.timesteps import ddim_timesteps
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import SMALL, StopAt  # noqa: E402

IN2N_SMALL = ("guidance.views=4", "guidance.edit_every=2", "guidance.ddim_steps=2")


def render_of(rgb: torch.Tensor) -> RenderOutput:
    batch, size = rgb.shape[:2]
    return RenderOutput(rgb=rgb, opacity=torch.ones(batch, size, size, 1),
                        depth=torch.full((batch, size, size, 1), 2.0))


def images(seed: int, batch: int, size: int) -> torch.Tensor:
    return torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(seed))


def ring(views: int, size: int) -> Cameras:
    return Cameras.from_spherical(torch.arange(views) * (360.0 / views), torch.full((views,), 15.0),
                                  torch.tensor(2.0), torch.tensor(40.0), size)


def with_clip_sample(prior: DiffusionPrior) -> DiffusionPrior:
    """``prior`` whose scheduler clips x̂0 to [−1, 1] (as a pixel model's may)."""
    scheduler = DDPMScheduler.from_config(prior.scheduler.config, clip_sample=True, clip_sample_range=1.0)
    return DiffusionPrior(prior.unet, scheduler, prior.text_encoder, prior.tokenizer, vae=prior.vae)


def reference_ddim(prior: DiffusionPrior, rgb: torch.Tensor, original: torch.Tensor, prompt: str, fraction: float,
                   steps: int, seed: int) -> torch.Tensor:
    """ε(z, I, T) alone, denoised by diffusers' DDIMScheduler made from the prior's scheduler over the first t
    training times (Instruct-NeRF2NeRF's schedule), from the same draws as the guidance's edit."""
    generator = torch.Generator().manual_seed(seed)
    z = prior.encode_images(rgb, generator).float()
    t_start = int(sample_timesteps(1, fraction, fraction, prior.num_train_timesteps, generator)[0])
    noise = torch.randn(z.shape, generator=generator)
    scheduler = DDIMScheduler.from_config(prior.scheduler.config, num_train_timesteps=t_start,
                                          trained_betas=prior.scheduler.betas.numpy().tolist(),
                                          set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == ddim_timesteps(t_start, steps)
    z_t = scheduler.add_noise(z, noise, scheduler.timesteps[:1])
    embeds = prior.encode_prompts([prompt])
    context = ConditionContext(source_image=original, source_mask=torch.ones(len(rgb), dtype=torch.bool))
    for t in scheduler.timesteps:
        eps = prior.predict_noise(z_t, t, embeds, conditioners=[SourceImageLatents(prior)], context=context)
        z_t = scheduler.step(eps, t, z_t).prev_sample
    return prior.decode_latents(z_t)


@pytest.mark.parametrize("clip", [False, True])
def test_the_edit_at_unit_scales_is_the_priors_own_ddim_sampler_of_the_image_and_text_conditioned_eps(
        tiny_ip2p_dir, clip):
    prior = load_prior(tiny_ip2p_dir)
    prior = with_clip_sample(prior) if clip else prior
    size = prior.image_size
    rgb, original = images(1, 2, size), images(2, 2, size)
    options = dict(prompt="make it blue", min_step_percent=0.6, max_step_percent=0.6, ddim_steps=5)
    unit = IN2NGuidance(prior, IN2NConfig(guidance_scale=1.0, image_guidance_scale=1.0, **options))
    edited = unit.edit(render_of(rgb), original, ring(2, size), 0, torch.Generator().manual_seed(3))
    expected = reference_ddim(prior, rgb, original, "make it blue", 0.6, 5, seed=3)
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert (edited - rgb).abs().max() > 0.05  # it denoised from t = 600: the image changed
    scaled = IN2NGuidance(prior, IN2NConfig(**options))  # s_T 7.5, s_I 1.5: the other branches count
    assert (scaled.edit(render_of(rgb), original, ring(2, size), 0, torch.Generator().manual_seed(3))
            - expected).abs().max() > 1e-3


def test_ddim_timesteps_follow_diffusers_leading_spacing():
    assert ddim_timesteps(500, 20) == list(range(475, -1, -25))
    assert ddim_timesteps(30, 20) == list(range(19, -1, -1))
    assert ddim_timesteps(5, 20) == [5, 4, 3, 2, 1, 0]
    assert ddim_timesteps(0, 20) == [0]


@pytest.mark.parametrize("views, every", [(5, 3), (3, 2)])
def test_the_dataset_update_replaces_exactly_one_view_in_turn_every_n_steps(tiny_ip2p_dir, views, every):
    prior = load_prior(tiny_ip2p_dir)
    size = 16
    guidance = IN2NGuidance(prior, IN2NConfig(prompt="make it blue", views=views, edit_every=every, ddim_steps=2))
    originals = images(9, views, size)
    guidance.start_dataset(ring(views, size), originals)
    generator = torch.Generator().manual_seed(0)
    steps = 13
    for step in range(steps):
        before = guidance.dataset.images.clone()
        cameras = guidance.views(step, generator, batch=2)
        indices = guidance.dataset.indices_of(cameras)
        assert len(set(indices.tolist())) == len(indices) == 2
        edits = step % every == 0
        view = guidance.dataset.next_view
        if edits:
            assert int(indices[0]) == view  # the view to edit is rendered this step
        render = render_of(images(100 + step, 2, size).requires_grad_(True))
        out = guidance(render, cameras, step, generator)
        changed = (guidance.dataset.images != before).flatten(1).any(1)
        assert changed.sum() == int(edits), step
        if edits:
            assert changed[view] and guidance.dataset.edited_at[view] == step
        # the loss is the fit of the step's renders to the dataset after the step's edit
        expected = photometric_loss(render.rgb, guidance.dataset.images[indices], "l1")
        assert torch.equal(out.loss, expected)
        out.loss.backward()
        assert render.rgb.grad.abs().sum() > 0
    dataset = guidance.dataset
    assert dataset.edits == math.ceil(steps / every)
    # the views were edited in turn: the first min(K, edits) of them, and the next edit takes the one after
    assert (dataset.edited_at >= 0).tolist() == [index < dataset.edits for index in range(views)]
    assert dataset.next_view == dataset.edits % views
    # views never edited keep the source's image exactly
    never = guidance.dataset.edited_at < 0
    assert torch.equal(guidance.dataset.images[never], originals[never])


def test_a_non_finite_edit_leaves_the_view_as_it_was(tiny_ip2p_dir):
    prior = load_prior(tiny_ip2p_dir)
    guidance = IN2NGuidance(prior, IN2NConfig(prompt="make it blue", views=2, ddim_steps=2))
    cameras, originals = ring(2, 16), images(9, 2, 16)
    nan = torch.full((2, 16, 16, 3), float("nan"))
    out = guidance(render_of(nan), cameras, 0, torch.Generator().manual_seed(0), source=render_of(originals))
    assert torch.equal(guidance.dataset.images, originals) and guidance.dataset.edits == 1
    assert out.logs["edit_skipped"] == 1.0


def test_a_normal_map_stage_is_refused_before_anything_runs():
    from dreamsmith.errors import ConfigError

    with pytest.raises(ConfigError, match="in2n fits colour renders .*; set stages.0.shading.guide_normals=false"):
        make_config("make it blue", overrides=["guidance.name=in2n", "shading.guide_normals=true"])


@pytest.fixture(scope="module")
def source_run(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run of "a red cube" on the tiny text-only model."""
    out = tmp_path_factory.mktemp("source") / "red-cube"
    generate(make_config("a red cube", model=str(tiny_sd_dir), steps=2, seed=4, overrides=SMALL), out)
    return out


def in2n_edit(source: Path, model: Path, steps: int):
    return edit_config(EditRequest(source=source, instruction="make it blue", method="in2n", model=str(model),
                                   steps=steps, overrides=IN2N_SMALL + ("checkpoint_every=100",)))


def test_an_in2n_edit_killed_and_resumed_continues_with_its_dataset_bit_for_bit(source_run, tiny_ip2p_dir, tmp_path):
    config, kind = in2n_edit(source_run, tiny_ip2p_dir, 7)
    run_edit(config, source_run, kind, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_edit(config, source_run, kind, tmp_path / "killed", progress=StopAt(3))
    stopped = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    dataset = stopped["stage_state"]["guidance"]["dataset"]
    assert stopped["step"] == 3 and dataset["edits"] == 2 and dataset["edited_at"].tolist() == [0, 2, -1, -1]
    report = run_edit(config, source_run, kind, tmp_path / "killed", resume=True)
    assert report["resumed_from_step"] == 3
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["stage_state"]
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["stage_state"]
    assert straight["guidance"]["dataset"]["edits"] == 4
    assert differences(straight["field"], resumed["field"]) == []
    assert differences(straight["guidance"], resumed["guidance"]) == []


def differences(first, second, prefix=""):
    """The keys at which two nested checkpoint states differ (tensors compared bit for bit, dtype and shape too)."""
    if isinstance(first, dict) and isinstance(second, dict):
        keys = sorted(set(first) | set(second), key=str)
        return [d for key in keys for d in differences(first.get(key), second.get(key), f"{prefix}{key}.")]
    if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
        same = first.dtype == second.dtype and first.shape == second.shape and torch.equal(first, second)
        return [] if same else [prefix]
    if isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)) and len(first) == len(second):
        pairs = enumerate(zip(first, second, strict=True))
        return [d for i, (a, b) in pairs for d in differences(a, b, f"{prefix}{i}.")]
    return [] if first == second else [prefix]
