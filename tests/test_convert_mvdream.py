"""``dreamsmith convert mvdream``: a tiny checkpoint in MVDream's official key layout, converted, must
predict what an independent forward of the same weights predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from ldm_reference import TINY_PARAMS, forward, random_state
from safetensors.torch import save_file
from test_cli_usage import run_cli as run_cli_probe
from test_generate import run_cli

from dreamsmith.engine.convert import MVDREAM_SD21_BASE_4VIEW, convert_mvdream
from dreamsmith.errors import ConfigError, ModelLoadError
from dreamsmith.guidance.ldm_unet import unet_config_from_ldm
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.mvdream_camera import mvdream_camera_labels
from dreamsmith.renderers.cameras import Cameras

FROZEN = {"first_stage_model.decoder.conv_out.bias": torch.zeros(3),
          "cond_stage_model.model.positional_embedding": torch.zeros(4, 8)}


def tiny_checkpoint(folder: Path, suffix: str = ".safetensors", drop: str = "", extra: str = "") -> Path:
    """A checkpoint in MVDream's layout: the tiny UNet under model.diffusion_model., plus frozen SD parts."""
    state = {f"model.diffusion_model.{k}": v for k, v in random_state(TINY_PARAMS).items()} | FROZEN
    state.pop(drop, None)
    if extra:
        state[extra] = torch.zeros(2)
    path = folder / f"tiny-4view{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def tiny_config(folder: Path) -> Path:
    path = folder / "tiny-4view.yaml"
    path.write_text(yaml.safe_dump({"model": {"params": {"unet_config": {"params": TINY_PARAMS}}}}))
    return path


@pytest.fixture(scope="module")
def converted(tiny_sd_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mvdream")
    return convert_mvdream(tiny_checkpoint(folder), folder / "tiny-mvdream", str(tiny_sd_dir), tiny_config(folder))


def test_the_converted_model_predicts_what_an_independent_forward_of_the_same_weights_predicts(converted):
    prior = load_prior(converted)
    assert prior.views_per_group == 4 and prior.camera_conditioning == "mvdream"
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(8, 4, 4, 4, generator=generator)
    t = torch.tensor([30] * 4 + [800] * 4)
    embeds = prior.encode_prompts(["a red cube"] * 4 + ["a blue sphere"] * 4)
    cameras = Cameras.from_spherical(torch.tensor([10.0, 100.0, 190.0, 280.0] * 2),
                                     torch.tensor([15.0] * 4 + [30.0] * 4), torch.tensor(1.7), torch.tensor(40.0), 32)
    got = prior.predict_noise(z_t, t, embeds, cameras=cameras)
    state = random_state(TINY_PARAMS)
    want = forward(state, TINY_PARAMS, z_t, t, embeds, mvdream_camera_labels(cameras.c2w), views=4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    per_view = forward(state, TINY_PARAMS, z_t, t, embeds, mvdream_camera_labels(cameras.c2w), views=1)
    assert (got - per_view).abs().max() > 1e-3  # the check tells multi-view from per-view attention


def test_the_folder_holds_safetensors_and_names_the_multiview_processor(converted, tiny_sd_dir):
    unet_files = sorted(p.name for p in (converted / "unet").iterdir())
    assert unet_files == ["config.json", "diffusion_pytorch_model.safetensors"]
    metadata = json.loads((converted / "dreamsmith.json").read_text())
    assert metadata["attention"] == "multiview" and metadata["views_per_group"] == 4
    assert metadata["camera_conditioning"] == "mvdream"
    index = json.loads((converted / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert json.loads((converted / "unet" / "config.json").read_text())["class_embed_type"] == "projection"


def test_the_official_architecture_is_stable_diffusion_2_1_base_with_a_camera_embedding():
    config = unet_config_from_ldm(MVDREAM_SD21_BASE_4VIEW, sample_size=32)
    assert config["block_out_channels"] == [320, 640, 1280, 1280] and config["attention_head_dim"] == [5, 10, 20, 20]
    assert config["down_block_types"][-1] == "DownBlock2D" and config["up_block_types"][0] == "UpBlock2D"
    assert config["cross_attention_dim"] == 1024 and config["use_linear_projection"]
    assert config["projection_class_embeddings_input_dim"] == 16


def test_missing_and_unexpected_keys_are_named_in_one_line(tiny_sd_dir, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path, drop="model.diffusion_model.middle_block.1.proj_in.bias",
                                 extra="model.diffusion_model.label_emb.0.weight")
    with pytest.raises(ModelLoadError) as error:
        convert_mvdream(checkpoint, tmp_path / "out", str(tiny_sd_dir), tiny_config(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "missing keys: mid_block.attentions.0.proj_in.bias" in message
    assert "unexpected keys: model.diffusion_model.label_emb.0.weight" in message
    assert not (tmp_path / "out").exists()


def test_the_official_architecture_refuses_a_checkpoint_of_another_size(tiny_sd_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="keys of another shape|missing keys"):
        convert_mvdream(tiny_checkpoint(tmp_path), tmp_path / "out", str(tiny_sd_dir))


def test_a_pickled_checkpoint_needs_allow_pickle_and_is_refused_before_torch_loads(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path, suffix=".pt")
    result, stderr = run_cli_probe("convert", "mvdream", str(checkpoint), str(tmp_path / "out"))
    assert result == {"code": 1, "torch": False, "diffusers": False}
    assert "--allow-pickle" in stderr and len(stderr.strip().splitlines()) <= 2
    with pytest.raises(ConfigError, match="already exists"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("")
        convert_mvdream(checkpoint, tmp_path / "full", allow_pickle=True)


def test_the_command_converts_a_pickled_checkpoint_when_allowed(tiny_sd_dir, tmp_path):
    checkpoint = tiny_checkpoint(tmp_path, suffix=".pt")
    out = tmp_path / "converted"
    done = run_cli("convert", "mvdream", str(checkpoint), str(out), "--base", str(tiny_sd_dir),
                   "--config", str(tiny_config(tmp_path)), "--allow-pickle")
    assert done.returncode == 0, done.stderr
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not any(p.suffix in (".pt", ".bin") for p in out.rglob("*"))


def test_the_key_renaming_agrees_with_diffusers_own_ldm_converter_on_every_shared_key():
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from dreamsmith.guidance.ldm_unet import rename_ldm_unet

    state = random_state(TINY_PARAMS)
    ours, unplaced = rename_ldm_unet(state, TINY_PARAMS)
    plain = {k: v for k, v in unet_config_from_ldm(TINY_PARAMS, 4).items() if "class_embed" not in k}
    theirs = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in state.items()}, plain)
    assert unplaced == [] and set(ours) - set(theirs) == {f"class_embedding.linear_{i}.{p}" for i in (1, 2)
                                                           for p in ("weight", "bias")}
    assert set(theirs) <= set(ours) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
