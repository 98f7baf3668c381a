"""The contract every registered guidance method passes (one shared test class over ``GUIDANCES``):
determinism under a seed, a checkpoint round trip of its own state, the NaN guard (a method that fits edited
views, Instruct-NeRF2NeRF: the NaN edit is dropped), a CPU run through
``dreamsmith generate`` on a tiny random model (a method that edits an existing asset: refused there in one
line; ``tests/test_edit_cli.py`` runs it through ``dreamsmith edit``), and exactness of every conditioner kind
turned off (scale 0, base ratio 1, weight 0)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from identity_states import instantid_state, photomaker_state
from ip_adapter_states import plain_state, save_safetensors, tiny_clip_vision
from ms_diffusion_states import ms_state, save_ms_safetensors
from PIL import Image
from safetensors.torch import save_file
from test_generate import SMALL, assert_clean_failure, run_cli
from uni_checkpoint import write_uni_checkpoint

from dreamsmith.guidance import GUIDANCES
from dreamsmith.guidance.conditioner_registry import CONDITIONERS, build_conditioners
from dreamsmith.guidance.conditioners import Conditioner
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.lora import add_lora, lora_state_dict
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput


def pytest_generate_tests(metafunc):
    if "guidance_name" in metafunc.fixturenames:
        metafunc.parametrize("guidance_name", sorted(GUIDANCES))


@pytest.fixture
def model_dir(guidance_name, request):
    """A tiny model the method can run on: a four-view one for multi-view methods, an InstructPix2Pix-shaped
    one for methods that edit a source."""
    cls = GUIDANCES[guidance_name]
    name = "tiny_mv_dir" if cls.views_per_group > 1 else "tiny_ip2p_dir" if cls.needs_source else "tiny_sd_dir"
    return request.getfixturevalue(name)


def views(batch: int = 2, size: int = 16) -> tuple[torch.Tensor, Cameras]:
    rgb = torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(21))
    cameras = Cameras.from_spherical(torch.linspace(0, 270, batch), torch.full((batch,), 15.0),
                                     torch.tensor(2.0), torch.tensor(40.0), size)
    return rgb, cameras


def make(name: str, prior, conditioners=(), **options):
    cls = GUIDANCES[name]
    return cls(prior, cls.config_class(prompt="a hamburger", **options), list(conditioners))


def gradient(guidance, seed: int, step: int = 0) -> tuple[torch.Tensor, dict]:
    rgb, cameras = views(2 * guidance.views_per_group)
    rgb.requires_grad_(True)
    size = rgb.shape[1]
    render = RenderOutput(rgb=rgb, opacity=torch.ones(len(cameras), size, size, 1),
                          depth=torch.full((len(cameras), size, size, 1), 2.0))
    generator = torch.Generator().manual_seed(seed)
    source = None
    if guidance.needs_source:  # a fixed render of the "source asset" from the same cameras
        source = RenderOutput(rgb=torch.rand(rgb.shape, generator=torch.Generator().manual_seed(22)),
                              opacity=render.opacity, depth=render.depth)
    out = guidance(render, cameras, step, generator, guidance.timestep(step), source=source)
    out.loss.backward()
    logs = guidance.update(RenderOutput(rgb=rgb.detach(), opacity=render.opacity, depth=render.depth), cameras,
                           step, generator, out)
    return rgb.grad, logs


class NaNPrompt(Conditioner):
    def transform_prompt_embeds(self, embeds, context):
        return torch.full_like(embeds, float("nan"))


class TestGuidanceContract:
    def test_same_seed_same_gradient_other_seed_other_gradient(self, guidance_name, model_dir):
        first = gradient(make(guidance_name, load_prior(model_dir)), seed=3)[0]
        again = gradient(make(guidance_name, load_prior(model_dir)), seed=3)[0]
        other = gradient(make(guidance_name, load_prior(model_dir)), seed=4)[0]
        assert torch.equal(first, again) and not torch.equal(first, other)

    def test_own_state_round_trips_through_a_checkpoint(self, guidance_name, model_dir):
        trained = make(guidance_name, load_prior(model_dir))
        for step in range(2):
            gradient(trained, seed=step, step=step)
        saved = trained.checkpoint_state()
        restored = make(guidance_name, load_prior(model_dir))
        restored.load_checkpoint_state(torch.load(_round_trip(saved), weights_only=True))
        assert torch.equal(gradient(trained, seed=9, step=2)[0], gradient(restored, seed=9, step=2)[0])
        again = restored.checkpoint_state()
        assert _flat(again) == _flat(trained.checkpoint_state())

    def test_a_nan_model_output_gives_a_zero_gradient_not_nan(self, guidance_name, model_dir):
        guidance = make(guidance_name, load_prior(model_dir), [NaNPrompt()])
        grad, _ = gradient(guidance, seed=0)
        if guidance.fits_views:  # the model only edits the views it fits: a NaN edit leaves them as they were
            assert torch.isfinite(grad).all() and torch.equal(guidance.dataset.images, guidance.dataset.originals)
            return
        assert torch.isfinite(grad).all() and torch.equal(grad, torch.zeros_like(grad))

    def test_runs_through_dreamsmith_generate_on_a_tiny_model(self, guidance_name, model_dir, tmp_path):
        out = tmp_path / "run"
        result = run_cli("generate", "a hamburger", "--model", str(model_dir), "--steps", "2", "--out", str(out),
                         "--quiet", *SMALL, f"guidance.name={guidance_name}",
                         f"camera.batch_size={GUIDANCES[guidance_name].views_per_group}")
        if GUIDANCES[guidance_name].needs_source:
            assert_clean_failure(result, f"guidance {guidance_name} edits an existing asset", "dreamsmith edit")
            assert not out.exists()
            return
        assert result.returncode == 0, result.stderr
        assert (out / "asset.glb").stat().st_size > 0

    def test_every_conditioner_kind_at_scale_zero_is_exact(self, guidance_name, model_dir, tmp_path):
        kinds = {"controlnet", "lora", "regions", "self_guidance", "uni_controlnet", "ip_adapter", "style_aligned",
                 "adapter", "multi_subject", "instantid", "photomaker"}
        # multimodal_prompt has no off switch: a prompt without images encoding exactly as before is its
        # invariant (test_multimodal_prompt.py)
        assert set(CONDITIONERS) - {"multimodal_prompt"} == kinds, "add an off case for the new conditioner kind"
        prior = load_prior(model_dir)
        controlnet = ControlNetModel.from_unet(prior.unet)
        with torch.no_grad():  # non-zero everywhere, so only the scale keeps it out
            for parameter in controlnet.parameters():
                parameter.add_(0.1)
        controlnet.save_pretrained(tmp_path / "controlnet", safe_serialization=True)
        donor = load_prior(model_dir)
        for parameter in add_lora(donor.unet, "donor", rank=2):
            with torch.no_grad():
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        save_file({f"unet.{k}": v for k, v in lora_state_dict(donor.unet, "donor").items()},
                  tmp_path / "style.safetensors")
        write_uni_checkpoint(tmp_path / "uni.safetensors", dict(prior.unet.config))
        adapter = save_safetensors(plain_state(prior.unet), tmp_path / "ip-adapter.safetensors")
        subjects = save_ms_safetensors(ms_state(prior.unet), tmp_path / "ms_adapter.safetensors")
        tiny_clip_vision(tmp_path / "image_encoder")
        Image.fromarray(np.full((24, 24, 3), (240, 128, 25), np.uint8)).save(tmp_path / "orange.png")
        image = str(tmp_path / "orange.png")
        (tmp_path / "subject").mkdir()  # a personalization adapter folder holding the same LoRA
        shutil.copy(tmp_path / "style.safetensors", tmp_path / "subject" / "pytorch_lora_weights.safetensors")
        face = tmp_path / "face.npy"
        np.save(face, np.random.default_rng(0).standard_normal(512).astype(np.float32))
        instantid = save_safetensors(instantid_state(prior.unet), tmp_path / "instantid" / "ip-adapter.safetensors")
        photomaker = tmp_path / "photomaker.safetensors"
        save_file({f"{part}.{k}": v.contiguous() for part, sub in photomaker_state(prior.unet).items()
                   for k, v in sub.items()}, photomaker)
        # each kind: its spec, the options that turn it off exactly, and those that turn it on
        specs = {
            "controlnet": ({"name": "controlnet", "model": str(tmp_path / "controlnet"), "source": "depth"},
                           {"scale": 0.0}, {"scale": 1.0}),
            "lora": ({"name": "lora", "path": str(tmp_path / "style.safetensors")},
                     {"scale": 0.0}, {"scale": 1.0, "adapter_name": "style1"}),
            "adapter": ({"name": "adapter", "path": str(tmp_path / "subject")},
                        {"scale": 0.0}, {"scale": 1.0, "reward_scale": 1.0}),
            "regions": ({"name": "regions", "regions": ["box(-5,-5,-5,5,5,5): a red cat"]},
                        {"base_ratio": 1.0}, {"base_ratio": 0.0}),
            "uni_controlnet": ({"name": "uni_controlnet", "model": str(tmp_path / "uni.safetensors")},
                               {"scale": 0.0}, {"scale": 1.0}),
            "self_guidance": ({"name": "self_guidance", "terms": ["hamburger:centroid=0.2,0.5", "hamburger:size=0.3"]},
                              {"weight": 0.0}, {"weight": 50.0}),
            "ip_adapter": ({"name": "ip_adapter", "path": str(adapter), "image": image},
                           {"scale": 0.0}, {"scale": 1.0}),
            "style_aligned": ({"name": "style_aligned", "image": image}, {"scale": 0.0}, {"scale": 1.0}),
            "multi_subject": ({"name": "multi_subject", "path": str(subjects),
                               "subjects": [f"box(-0.5,-0.5,-0.5,0.5,0.5,0.5): {image}=hamburger"]},
                              {"scale": 0.0}, {"scale": 1.0}),
            "instantid": ({"name": "instantid", "path": str(instantid), "face_embedding": str(face),
                           "controlnet": str(tmp_path / "controlnet")},
                          {"scale": 0.0, "controlnet_scale": 0.0}, {"scale": 0.8, "controlnet_scale": 0.8}),
            # the prompt has no trigger word: its embeddings are unchanged, only the LoRA acts
            "photomaker": ({"name": "photomaker", "path": str(photomaker), "images": [image]},
                           {"lora_scale": 0.0}, {"lora_scale": 1.0}),
        }
        bare = gradient(make(guidance_name, prior), seed=5)[0]
        for kind, (spec, off, on) in specs.items():
            at_off = build_conditioners([{**spec, **off}], prior, prompt="a hamburger")
            assert torch.equal(gradient(make(guidance_name, prior, at_off), seed=5)[0], bare), kind
            at_on = build_conditioners([{**spec, **on}], prior, prompt="a hamburger")
            assert not torch.equal(gradient(make(guidance_name, prior, at_on), seed=5)[0], bare), kind


def _round_trip(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _flat(state, prefix=""):
    """Nested dicts of tensors and numbers as comparable (key, value) pairs."""
    if isinstance(state, dict):
        return sorted(item for key, value in state.items() for item in _flat(value, f"{prefix}{key}."))
    if isinstance(state, torch.Tensor):
        return [(prefix, tuple(state.flatten().tolist()))]
    if isinstance(state, (list, tuple)):
        return [item for i, value in enumerate(state) for item in _flat(value, f"{prefix}{i}.")]
    return [(prefix, state)]
