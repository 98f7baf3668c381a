"""Uni-ControlNet: FDN with zero modulation is GroupNorm, the published checkpoint layout loads key for key (and a
wrong one is refused in one line naming every key), zero convolutions and scale 0 leave the base model exact,
the global tokens are appended after the text tokens unchanged, and `dreamsmith texture --control` runs it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import assert_clean_failure, run_cli  # noqa: E402
from test_texture_cli import SMALL, painted_texture  # noqa: E402
from test_texture_stage import cube_with_uvs  # noqa: E402
from uni_checkpoint import write_uni_checkpoint  # noqa: E402

from dreamsmith.errors import DreamsmithError, ModelLoadError  # noqa: E402
from dreamsmith.guidance.conditioner_registry import build_conditioners  # noqa: E402
from dreamsmith.guidance.conditioners import ConditionContext, control_image_from_render  # noqa: E402
from dreamsmith.guidance.uni_controlnet import (  # noqa: E402
    PUBLISHED_SLOTS,
    FeatureModulatedNorm,
    UniControlNetConditioner,
    stacked_conditions,
)
from dreamsmith.guidance.uni_loading import (  # noqa: E402
    GLOBAL_PREFIX,
    LOCAL_PREFIX,
    ldm_params,
    load_uni_controlnet,
    local_checkpoint_name,
)
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.renderers.outputs import RenderOutput  # noqa: E402

TEXT_DIM = 32


def test_fdn_with_zero_modulation_is_plain_groupnorm_bit_for_bit():
    norm = FeatureModulatedNorm(groups=4, channels=8, feature_channels=6)
    for conv in (norm.conv_gamma, norm.conv_beta):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=generator) * 3 + 1
    norm.features = torch.randn(2, 6, 5, 5, generator=generator)
    assert torch.equal(norm(x), F.group_norm(x, 4, eps=1e-5))
    torch.nn.init.normal_(norm.conv_gamma.weight)
    assert not torch.allclose(norm(x), F.group_norm(x, 4, eps=1e-5))  # the features modulate it when non-zero


@pytest.fixture(scope="module")
def uni_file(tiny_sd_prior, tmp_path_factory):
    path = tmp_path_factory.mktemp("uni") / "uni.safetensors"
    return path, write_uni_checkpoint(path, dict(tiny_sd_prior.unet.config), global_dim=TEXT_DIM)


def test_every_key_of_the_published_layout_lands_in_its_place(tiny_sd_prior, uni_file):
    path, state = uni_file
    local, global_adapter = load_uni_controlnet(path, tiny_sd_prior.unet, "cpu", torch.float32)
    params = ldm_params(tiny_sd_prior.unet.config)
    ours = {LOCAL_PREFIX + local_checkpoint_name(k, params): v for k, v in local.state_dict().items()}
    ours.update({GLOBAL_PREFIX + k: v for k, v in global_adapter.state_dict().items()})
    adapter_keys = {k for k in state if k.startswith((LOCAL_PREFIX, GLOBAL_PREFIX))}
    assert set(ours) == adapter_keys
    assert all(torch.equal(ours[k], state[k]) for k in adapter_keys)
    assert local.local_channels == 21 and global_adapter.tokens == 4


def test_a_checkpoint_with_wrong_keys_is_refused_naming_each_key_in_one_line(tiny_sd_prior, tmp_path):
    config = dict(tiny_sd_prior.unet.config)
    bad = tmp_path / "bad.safetensors"
    write_uni_checkpoint(bad, config, global_dim=TEXT_DIM,
                         drop=("local_adapter.zero_convs.2.0.bias", "global_adapter.ff2.net.0.proj.bias",
                               "local_adapter.input_blocks.1.0.norm_in.conv_beta.weight"),
                         extra=("local_adapter.input_blocks.1.0.in_layers.0.weight", "local_adapter.extra.weight"))
    with pytest.raises(ModelLoadError) as error:
        load_uni_controlnet(bad, tiny_sd_prior.unet, "cpu", torch.float32)
    message = str(error.value)
    assert "\n" not in message
    assert ("missing keys: global_adapter.ff2.net.0.proj.bias, "
            "local_adapter.input_blocks.1.0.norm_in.conv_beta.weight, "
            "local_adapter.zero_convs.2.0.bias;") in message
    assert "unexpected keys: local_adapter.extra.weight, local_adapter.input_blocks.1.0.in_layers.0.weight" in message
    wider = tmp_path / "wider.safetensors"
    write_uni_checkpoint(wider, {**config, "block_out_channels": [16, 32]})
    with pytest.raises(ModelLoadError, match="keys of another shape: local_adapter.input_blocks.0.0.bias"):
        load_uni_controlnet(wider, tiny_sd_prior.unet, "cpu", torch.float32)
    other = tmp_path / "other.safetensors"
    write_uni_checkpoint(other, config, local=False)
    with pytest.raises(ModelLoadError, match="no local_adapter.* or global_adapter.* keys"):
        load_uni_controlnet(other, tiny_sd_prior.unet, "cpu", torch.float32)


def render_and_cameras(batch: int = 2, size: int = 16) -> tuple[RenderOutput, Cameras]:
    generator = torch.Generator().manual_seed(4)
    opacity = (torch.rand(batch, size, size, 1, generator=generator) > 0.3).float()
    normal = F.normalize(torch.randn(batch, size, size, 3, generator=generator), dim=-1)
    render = RenderOutput(rgb=torch.rand(batch, size, size, 3, generator=generator), opacity=opacity,
                          depth=(1.5 + torch.rand(batch, size, size, 1, generator=generator)) * opacity, normal=normal)
    cameras = Cameras.from_spherical(torch.tensor([0.0, 90.0])[:batch], torch.full((batch,), 15.0),
                                     torch.tensor(2.0), torch.tensor(40.0), size)
    return render, cameras


def eps_with(prior, conditioners, branch_labels=("cond", "cond", "uncond", "uncond")):
    render, cameras = render_and_cameras()
    generator = torch.Generator().manual_seed(9)
    z_t = torch.randn(2, 4, 4, 4, generator=generator)
    embeds = torch.cat([prior.encode_prompts(["a red crate"] * 2), prior.encode_prompts([""] * 2)])
    context = ConditionContext(render=render, cameras=cameras, branch_labels=branch_labels)
    return prior.predict_noise(torch.cat([z_t, z_t]), torch.full((4,), 500), embeds, conditioners=conditioners,
                               context=context)


def test_zero_convolutions_and_scale_zero_leave_the_base_model_exact(tiny_sd_prior, tmp_path, uni_file):
    prior = tiny_sd_prior
    plain = eps_with(prior, [])
    initialised = tmp_path / "init.safetensors"
    write_uni_checkpoint(initialised, dict(prior.unet.config), zero_outputs=True)
    local, _ = load_uni_controlnet(initialised, prior.unet, "cpu", torch.float32)
    assert torch.equal(eps_with(prior, [UniControlNetConditioner(local, ["depth"], PUBLISHED_SLOTS)]), plain)
    trained, _ = load_uni_controlnet(uni_file[0], prior.unet, "cpu", torch.float32)
    assert torch.equal(eps_with(prior, [UniControlNetConditioner(trained, ["depth"], PUBLISHED_SLOTS, 0.0)]), plain)
    acting = eps_with(prior, [UniControlNetConditioner(trained, ["depth"], PUBLISHED_SLOTS, 1.0)])
    assert (acting - plain).abs().max() > 1e-4


def test_each_render_fills_its_own_slot_of_the_stacked_conditions():
    render, cameras = render_and_cameras()
    depth = control_image_from_render(render, "depth", cameras)
    normal = control_image_from_render(render, "normal", cameras)
    slots = ["normal", "canny", "depth"]
    stacked = stacked_conditions({"depth": depth, "normal": normal}, slots, depth)
    assert stacked.shape == (2, 9, 16, 16)
    assert torch.equal(stacked[:, 0:3], normal) and torch.equal(stacked[:, 6:9], depth)
    assert not stacked[:, 3:6].any()


def test_global_tokens_follow_the_text_tokens_and_the_unconditional_branch_sees_a_zero_embedding(tiny_sd_prior,
                                                                                                uni_file):
    _, global_adapter = load_uni_controlnet(uni_file[0], tiny_sd_prior.unet, "cpu", torch.float32)
    embedding = torch.randn(1, TEXT_DIM, generator=torch.Generator().manual_seed(2))
    conditioner = UniControlNetConditioner(None, ["depth"], PUBLISHED_SLOTS, 1.0, global_adapter, embedding, 0.7)
    text = torch.randn(4, 16, TEXT_DIM)
    context = ConditionContext(branch_labels=("cond", "cond", "uncond", "uncond"))
    out = conditioner.transform_prompt_embeds(text, context)
    assert out.shape == (4, 16 + 4, TEXT_DIM) and torch.equal(out[:, :16], text)  # word positions unchanged
    with torch.no_grad():
        assert torch.allclose(out[0, 16:], 0.7 * global_adapter(embedding)[0], atol=1e-6)
        assert torch.allclose(out[2, 16:], 0.7 * global_adapter(torch.zeros(1, TEXT_DIM))[0], atol=1e-6)
        # LayerNorm first: the tokens do not depend on the embedding's length, only on its direction
        assert torch.allclose(global_adapter(3 * embedding), global_adapter(embedding), atol=1e-4)
    off = UniControlNetConditioner(None, ["depth"], PUBLISHED_SLOTS, 1.0, global_adapter, embedding, 0.0)
    assert not off.transform_prompt_embeds(text, context)[:, 16:].any()  # strength 0: zero tokens


def test_a_reference_image_is_embedded_by_a_clip_vision_model_for_the_global_adapter(tiny_sd_prior, uni_file,
                                                                                       tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=TEXT_DIM)).save_pretrained(tmp_path / "clip")
    Image.fromarray(np.full((40, 56, 3), (200, 30, 30), np.uint8)).save(tmp_path / "red.png")
    spec = {"name": "uni_controlnet", "model": str(uni_file[0]), "reference_image": str(tmp_path / "red.png"),
            "image_encoder": str(tmp_path / "clip")}
    (conditioner,) = build_conditioners([spec], tiny_sd_prior)
    assert conditioner.image_embedding.shape == (1, TEXT_DIM) and conditioner.global_adapter is not None
    plain = eps_with(tiny_sd_prior, [])
    assert (eps_with(tiny_sd_prior, [conditioner]) - plain).abs().max() > 1e-4
    with pytest.raises(DreamsmithError, match="needs both reference_image and image_encoder"):
        build_conditioners([{**spec, "image_encoder": ""}], tiny_sd_prior)
    with pytest.raises(DreamsmithError, match="has no 'normal' condition; its slots are canny, mlsd"):
        build_conditioners([{**spec, "sources": ["depth", "normal"]}], tiny_sd_prior)


@pytest.mark.slow
def test_texture_command_runs_a_uni_controlnet_fed_by_depth_and_normal_renders(tiny_sd_dir, tmp_path):
    from dreamsmith.guidance.loading import load_prior

    prior = load_prior(tiny_sd_dir)
    config = dict(prior.unet.config)
    write_uni_checkpoint(tmp_path / "uni.safetensors", config)
    write_uni_checkpoint(tmp_path / "uni-init.safetensors", config, zero_outputs=True)
    write_uni_checkpoint(tmp_path / "uni-dn.safetensors", config, local_channels=6)  # trained on depth + normal
    stacked = ("guidance.conditioners=[{name: uni_controlnet, model: " + str(tmp_path / "uni-dn.safetensors")
               + ", sources: [depth, normal], slots: [depth, normal]}]")
    cube_with_uvs(tmp_path / "cube.glb")
    common = [str(tmp_path / "cube.glb"), "a wooden crate", "--model", str(tiny_sd_dir), "--quiet", "--seed", "2",
              "--steps", "2", *SMALL]
    runs = {"plain": [], "init": ["--control", f"depth={tmp_path / 'uni-init.safetensors'}"],
            "depth": ["--control", f"depth={tmp_path / 'uni.safetensors'}:0.8"], "stacked": ["--set", stacked]}
    textures = {}
    for name, options in runs.items():
        result = run_cli("texture", *common, "--out", str(tmp_path / name), *options)
        assert result.returncode == 0, result.stderr
        textures[name] = painted_texture(tmp_path / name)
    assert np.array_equal(textures["init"], textures["plain"])  # zero convolutions: the base model exactly
    assert np.abs(textures["depth"] - textures["plain"]).max() > 1
    assert np.abs(textures["stacked"] - textures["depth"]).max() > 1
    source = trimesh.load(tmp_path / "cube.glb", force="mesh", process=False)
    asset = trimesh.load(tmp_path / "depth" / "asset.glb", force="mesh", process=False)
    assert asset.vertices.tobytes() == source.vertices.tobytes()
    result = run_cli("texture", *common, "--out", str(tmp_path / "normal"),
                     "--control", f"depth,normal={tmp_path / 'uni.safetensors'}")
    assert_clean_failure(result, "has no 'normal' condition")
    assert not (tmp_path / "normal").exists()
