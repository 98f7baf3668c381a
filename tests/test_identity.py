"""Identity adapters: InstantID (ID tokens + IdentityNet on keypoints of 3D landmarks) and PhotoMaker (ID
embeddings fused into the class word's prompt positions + its LoRA), on synthetic checkpoints in the published
layouts and tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from identity_states import FACE_DIM, instantid_folder, instantid_state
from ip_adapter_states import save_safetensors

from dreamsmith.errors import ConfigError, DreamsmithError, ModelLoadError
from dreamsmith.face_embedding import read_face_embedding
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.face_keypoints import DEFAULT_LANDMARKS, KEYPOINT_COLOURS, keypoint_images, project
from dreamsmith.guidance.instantid import load_instantid
from dreamsmith.guidance.loading import load_prior
from dreamsmith.renderers.cameras import Cameras

LANDMARKS = torch.tensor(DEFAULT_LANDMARKS)


def cameras(azimuths: list[float]) -> Cameras:
    return Cameras.from_spherical(torch.tensor(azimuths), torch.zeros(len(azimuths)), torch.full((len(azimuths),), 2.5),
                                  torch.full((len(azimuths),), 40.0), 32)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(FACE_DIM).astype(np.float32)


@pytest.fixture(scope="module")
def instantid_dir(tmp_path_factory, tiny_sd_dir, tiny_sd_prior):
    return instantid_folder(tmp_path_factory.mktemp("InstantX") / "InstantID", tiny_sd_prior.unet, tiny_sd_dir)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 4, 4, generator=generator), torch.tensor([500, 700]), torch.randn(2, 16, 32,
                                                                                                generator=generator)


def test_keypoints_are_drawn_where_the_landmarks_project_and_only_where_the_face_is_seen():
    views = cameras([0.0, 180.0, 90.0])
    images, visible = keypoint_images(LANDMARKS, views, 64)
    assert visible.tolist() == [True, False, False]
    pixels, _ = project(LANDMARKS, views.with_resolution(64, 64))
    for index, colour in enumerate(KEYPOINT_COLOURS):
        x, y = pixels[0, index].long().tolist()
        assert images[0, :, y, x].tolist() == list(colour)
    assert pixels[0, 0, 0] < 32 < pixels[0, 1, 0]  # the left eye (red) on the image's left, seen from the front
    assert pixels[0, 0, 1] < pixels[0, 3, 1]  # the eyes above the mouth
    assert images[1:].abs().max() == 0
    limb = (pixels[0, 0] + pixels[0, 2]) / 2  # half-way from the left eye to the nose: the dimmed red limb
    assert images[0, :, int(limb[1]), int(limb[0])].tolist() == pytest.approx([0.6, 0.0, 0.0])


def test_loads_instantids_published_layout(instantid_dir, tiny_sd_prior, face):
    with pytest.raises(ModelLoadError, match="pickled"):
        load_instantid(instantid_dir, face, tiny_sd_prior, LANDMARKS)
    conditioner = load_instantid(instantid_dir, face, tiny_sd_prior, LANDMARKS, allow_pickle=True)
    assert conditioner.image_tokens.shape == (1, 16, 32) and conditioner.adapter.reads_hidden_states
    assert not torch.allclose(conditioner.image_tokens, conditioner.zero_tokens)
    assert conditioner.identitynet is not None


def test_bad_keys_are_named_in_one_line(tmp_path, tiny_sd_prior, face):
    state = instantid_state(tiny_sd_prior.unet)
    state["image_proj"]["extra.weight"] = state["image_proj"].pop("layers.0.0.to_out.weight")
    state["ip_adapter"].pop("3.to_v_ip.weight")
    file = save_safetensors(state, tmp_path / "ip-adapter.safetensors")
    with pytest.raises(ModelLoadError) as error:
        load_instantid(file, face, tiny_sd_prior, LANDMARKS, controlnet_scale=0.0)
    message = str(error.value)
    assert "missing layers.0.0.to_out.weight; unexpected extra.weight" in message and "\n" not in message
    del state["image_proj"]["extra.weight"]
    state["image_proj"]["layers.0.0.to_out.weight"] = torch.zeros(32, 64)
    with pytest.raises(ModelLoadError, match="ip_adapter does not fit its layout: missing 3.to_v_ip.weight"):
        load_instantid(save_safetensors(state, file), face, tiny_sd_prior, LANDMARKS, controlnet_scale=0.0)


def test_wrong_embedding_width_and_base_model_are_refused(tmp_path, instantid_dir, tiny_sd_prior, tiny_sdxl_dir,
                                                          face):
    with pytest.raises(ConfigError, match="reads 512-wide face embeddings, the face embedding has 128"):
        load_instantid(instantid_dir, face[:128], tiny_sd_prior, LANDMARKS, allow_pickle=True)
    with pytest.raises(ConfigError, match="another base model: its image tokens are 32 wide"):
        load_instantid(instantid_dir, face, load_prior(tiny_sdxl_dir), LANDMARKS, allow_pickle=True)


def test_both_scales_zero_is_the_base_model_and_a_view_without_the_face_sees_the_base(instantid_dir, tiny_sd_prior,
                                                                                       face, inputs):
    z, t, text = inputs
    views = cameras([0.0, 180.0])
    context = ConditionContext(cameras=views)
    base = tiny_sd_prior.predict_noise(z, t, text, cameras=views)
    off = load_instantid(instantid_dir, face, tiny_sd_prior, LANDMARKS, scale=0.0, controlnet_scale=0.0,
                         allow_pickle=True)
    assert off.identitynet is None
    assert torch.equal(tiny_sd_prior.predict_noise(z, t, text, cameras=views, conditioners=[off], context=context),
                       base)
    on = load_instantid(instantid_dir, face, tiny_sd_prior, LANDMARKS, allow_pickle=True)
    out = tiny_sd_prior.predict_noise(z, t, text, cameras=views, conditioners=[on], context=context)
    assert (out[0] - base[0]).abs().max() > 1e-3  # the front view sees the face
    assert torch.equal(out[1], base[1])  # the back view does not: gated to the base model
    for scale, net_scale in ((0.8, 0.0), (0.0, 0.8)):  # each part alone changes the front view
        one = load_instantid(instantid_dir, face, tiny_sd_prior, LANDMARKS, scale=scale, controlnet_scale=net_scale,
                             allow_pickle=True)
        single = tiny_sd_prior.predict_noise(z, t, text, cameras=views, conditioners=[one], context=context)
        assert (single[0] - base[0]).abs().max() > 1e-4 and torch.equal(single[1], base[1])


def test_identitynet_reads_the_face_tokens_not_the_text(instantid_dir, tiny_sd_prior, face, inputs):
    z, t, text = inputs
    conditioner = load_instantid(instantid_dir, face, tiny_sd_prior, LANDMARKS, allow_pickle=True)
    context = ConditionContext(cameras=cameras([0.0, 0.0]), image_size=32, timesteps=t)
    with torch.no_grad():
        first = conditioner.unet_kwargs(z, t, text, context)
        other = conditioner.unet_kwargs(z, t, torch.randn_like(text), context)
        zeros = conditioner.unet_kwargs(z, t, torch.zeros_like(text), context)
    for kwargs in (other, zeros):
        assert torch.equal(kwargs["mid_block_additional_residual"], first["mid_block_additional_residual"])
        assert all(torch.equal(a, b) for a, b in zip(kwargs["down_block_additional_residuals"],
                                                     first["down_block_additional_residuals"], strict=True))
    assert first["mid_block_additional_residual"].abs().max() > 0
    uncond = ConditionContext(cameras=cameras([0.0, 0.0]), image_size=32, timesteps=t, branch_labels=("cond", "uncond"))
    with torch.no_grad():
        split = conditioner.unet_kwargs(z, t, text, uncond)["mid_block_additional_residual"]
    assert torch.equal(split[0], first["mid_block_additional_residual"][0])  # the face's tokens
    assert not torch.equal(split[1], first["mid_block_additional_residual"][1])  # the zero embedding's


def test_face_embedding_files(tmp_path, face):
    from safetensors.numpy import save_file

    np.save(tmp_path / "face.npy", face[None])
    save_file({"embedding": face}, str(tmp_path / "face.safetensors"))
    assert np.array_equal(read_face_embedding(tmp_path / "face.npy"), face)
    assert np.array_equal(read_face_embedding(tmp_path / "face.safetensors"), face)
    np.save(tmp_path / "short.npy", face[:128])
    save_file({"a": face, "b": face}, str(tmp_path / "two.safetensors"))
    (tmp_path / "face.txt").write_text("1 2 3")
    for name, message in [("short.npy", r"shape \[128\]; a face embedding is one 512-wide"),
                          ("two.safetensors", "holds 2 tensors"), ("face.txt", "not a .npy or .safetensors"),
                          ("none.npy", "does not exist")]:
        with pytest.raises(DreamsmithError, match=message) as error:
            read_face_embedding(tmp_path / name)
        assert "\n" not in str(error.value)


def test_config_entries_are_checked_when_the_config_resolves(tmp_path, face):
    from dreamsmith.guidance.conditioner_registry import conditioner_options

    np.save(tmp_path / "face.npy", face)
    spec = {"name": "instantid", "path": "ip-adapter.bin", "face_embedding": str(tmp_path / "face.npy")}
    _, options = conditioner_options(spec, "guidance.conditioners.0")
    assert options.landmarks == [v for point in DEFAULT_LANDMARKS for v in point]
    _, options = conditioner_options({**spec, "landmarks": list(range(15))}, "guidance.conditioners.0")
    assert options.landmarks == [float(v) for v in range(15)]
    for bad, message in [({"landmarks": [0.0] * 14}, "needs 15 numbers"),
                         ({"face_embedding": str(tmp_path / "none.npy")}, "face_embedding' .*none.npy does not exist"),
                         ({"scale": -1}, "scale")]:
        with pytest.raises(ConfigError, match=message):
            conditioner_options({**spec, **bad}, "guidance.conditioners.0")
    with pytest.raises(ConfigError, match="needs at least one photo"):
        conditioner_options({"name": "photomaker", "path": "photomaker-v1.bin"}, "guidance.conditioners.0")


def test_instantid_on_an_sdxl_shaped_model(tmp_path, tiny_sdxl_dir, face, inputs):
    """InstantID's own family: IdentityNet also reads SDXL's pooled text and time ids (as the published pipeline
    passes them), but not the text tokens."""
    z, t, _ = inputs
    prior = load_prior(tiny_sdxl_dir)
    folder = instantid_folder(tmp_path / "InstantID", prior.unet, tiny_sdxl_dir)
    conditioner = load_instantid(folder, face, prior, LANDMARKS, allow_pickle=True)
    assert conditioner.image_tokens.shape == (1, 16, 64)
    packed = prior.encode_prompts(["a red cube", "a blue sphere"])
    views = cameras([0.0, 180.0])
    base = prior.predict_noise(z, t, packed, cameras=views)
    out = prior.predict_noise(z, t, packed, cameras=views, conditioners=[conditioner],
                              context=ConditionContext(cameras=views))
    assert (out[0] - base[0]).abs().max() > 1e-4 and torch.equal(out[1], base[1])
    hidden, kwargs = prior.text_condition(packed)
    context = ConditionContext(cameras=views, image_size=prior.image_size, timesteps=t,
                               added_cond_kwargs=kwargs["added_cond_kwargs"])
    with torch.no_grad():
        first = conditioner.unet_kwargs(z, t, hidden, context)["mid_block_additional_residual"]
        other = conditioner.unet_kwargs(z, t, torch.randn_like(hidden), context)["mid_block_additional_residual"]
    assert torch.equal(first, other) and first[0].abs().max() > 0


def test_id_tokens_equal_diffusers_ip_adapter_on_instantids_weights(tiny_sd_dir, tiny_sd_prior, face, inputs):
    """The ID-token half is IP-Adapter Plus's attention: diffusers' own implementation, fed the face embedding as
    its image embedding, is the oracle (IdentityNet off, no cameras: every sample sees the face)."""
    import copy

    from diffusers import UNet2DConditionModel

    from dreamsmith.guidance.instantid import InstantIDConditioner
    from dreamsmith.guidance.ip_adapter_loading import build_ip_adapter

    z, t, text = inputs
    state = instantid_state(tiny_sd_prior.unet, seed=4)
    reference = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    reference._load_ip_adapter_weights(copy.deepcopy(state))
    embeds = torch.as_tensor(face)[None, None].repeat(2, 1, 1)
    with torch.no_grad():
        expected = reference(z, t, encoder_hidden_states=text, added_cond_kwargs={"image_embeds": [embeds[:, None]]}
                             ).sample
        adapter = build_ip_adapter(state, tiny_sd_prior.unet)
        tokens = adapter.image_proj(embeds[:1])
    assert tokens.shape == (1, 16, 32)
    conditioner = InstantIDConditioner(adapter, tokens, tokens, LANDMARKS, None, scale=1.0)
    ours = tiny_sd_prior.predict_noise(z, t, text, conditioners=[conditioner])
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)
