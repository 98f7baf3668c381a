"""MS-Diffusion's multi-subject layout in 3D: the published checkpoint layout, the layout-guided attention's
invariants, the projected boxes, and `generate --subject` through the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import TEXT_DIM
from ip_adapter_states import CLIP_HIDDEN, tiny_clip_vision
from ms_diffusion_states import ms_state, save_ms_safetensors
from PIL import Image
from test_cli_usage import run_cli as probe_cli
from test_generate import SMALL
from test_generate import run_cli as cli

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.attention import AttentionHook, attend
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.grounding_resampler import fourier_box_embedding
from dreamsmith.guidance.ip_adapter import IPAdapterConditioner, IPAdapterLayer
from dreamsmith.guidance.ms_diffusion_loading import build_ms_adapter, read_ms_state
from dreamsmith.guidance.multi_subject import (
    LayoutCrossAttention,
    MultiSubjectConditioner,
    box_token_masks,
    projected_boxes,
)
from dreamsmith.renderers.cameras import Cameras


def front_cameras(views: int = 2) -> Cameras:
    return Cameras.from_spherical(torch.linspace(0, 90, views), torch.zeros(views), torch.full((views,), 2.0),
                                  torch.full((views,), 40.0), 32)


def conditioner(prior, state, lower, upper, phrases=(True,), scale=1.0, seed=3) -> MultiSubjectConditioner:
    generator = torch.Generator().manual_seed(seed)
    adapter = build_ms_adapter(state, prior.unet)
    subjects = len(lower)
    return MultiSubjectConditioner(adapter, torch.randn(subjects, 5, CLIP_HIDDEN, generator=generator),
                                   torch.randn(subjects, TEXT_DIM, generator=generator), torch.tensor(phrases),
                                   torch.tensor(lower), torch.tensor(upper), scale)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 4, 4, generator=generator), torch.tensor([500, 500]),
            torch.randn(2, 16, TEXT_DIM, generator=generator))


def test_fourier_embedding_is_the_published_order():
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]])
    bands = (100 ** (torch.arange(8) / 8))[None, None]  # MS-Diffusion's FourierEmbedder, as written there
    x = bands * boxes.unsqueeze(-1)
    published = torch.stack((x.sin(), x.cos()), dim=-1).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    assert torch.equal(fourier_box_embedding(boxes), published)


def test_reads_both_file_forms_and_names_bad_keys_in_one_line(tiny_sd_prior, tmp_path):
    state = ms_state(tiny_sd_prior.unet)
    torch.save(state, tmp_path / "ms_adapter.bin")
    save_ms_safetensors(state, tmp_path / "conv" / "ms_adapter.safetensors")
    pickled = read_ms_state(tmp_path / "ms_adapter.bin", allow_pickle=True)
    converted = read_ms_state(tmp_path / "conv" / "ms_adapter.safetensors")
    for read in (pickled, converted):
        adapter = build_ms_adapter(read, tiny_sd_prior.unet)
        assert adapter.image_proj.queries == 3 and adapter.image_proj.phrase_dim == TEXT_DIM
        assert sorted(adapter.ip_adapter) == ["1", "3", "5", "7"]
    with pytest.raises(ModelLoadError, match="pickled checkpoint"):
        read_ms_state(tmp_path / "ms_adapter.bin")
    broken = {**state, "image_proj": dict(state["image_proj"])}
    del broken["image_proj"]["attention_norm.weight"]
    broken["image_proj"]["latents"] = torch.zeros(1, 3, 32)  # an IP-Adapter Plus key
    with pytest.raises(ModelLoadError) as error:
        build_ms_adapter(broken, tiny_sd_prior.unet)
    message = str(error.value)
    assert "missing attention_norm.weight" in message and "unexpected latents" in message and "\n" not in message
    stray = {**state, "ms_adapter": {**state["ms_adapter"], "3.to_out_ip.weight": torch.zeros(1)}}
    with pytest.raises(ModelLoadError, match=r"ms_adapter does not fit its layout: missing none; unexpected 3.to_out"):
        build_ms_adapter(stray, tiny_sd_prior.unet)
    with pytest.raises(ModelLoadError, match="lacks dummy_image_tokens"):
        torch.save({k: v for k, v in state.items() if k != "dummy_image_tokens"}, tmp_path / "partial.bin")
        read_ms_state(tmp_path / "partial.bin", allow_pickle=True)


def test_scale_zero_is_the_base_model_bit_for_bit(tiny_sd_prior, inputs):
    z, t, text = inputs
    off = conditioner(tiny_sd_prior, ms_state(tiny_sd_prior.unet), [[-0.3, -0.3, -0.3]], [[0.3, 0.3, 0.3]], scale=0)
    context = ConditionContext(cameras=front_cameras())
    base = tiny_sd_prior.predict_noise(z, t, text)
    assert torch.equal(tiny_sd_prior.predict_noise(z, t, text, conditioners=[off], context=context), base)
    on = conditioner(tiny_sd_prior, ms_state(tiny_sd_prior.unet), [[-0.3, -0.3, -0.3]], [[0.3, 0.3, 0.3]])
    assert (tiny_sd_prior.predict_noise(z, t, text, conditioners=[on], context=context) - base).abs().max() > 1e-3


def test_a_box_around_every_view_is_plain_ip_adapter_with_its_tokens(tiny_sd_prior, inputs):
    z, t, text = inputs
    # a box enclosing the cameras reaches behind them: its rectangle is the whole image in every view
    subject = conditioner(tiny_sd_prior, ms_state(tiny_sd_prior.unet), [[-10.0] * 3], [[10.0] * 3], scale=0.8)
    cameras = front_cameras(1)
    assert torch.equal(projected_boxes(subject.lower, subject.upper, cameras), torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))
    tokens = subject.subject_tokens(torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))
    plain = IPAdapterConditioner(subject.adapter, tokens, torch.zeros_like(tokens), scale=0.8)
    context = ConditionContext(cameras=cameras, branch_labels=("uncond", "cond"))
    ours = tiny_sd_prior.predict_noise(z, t, text, conditioners=[subject], context=context)
    expected = tiny_sd_prior.predict_noise(z, t, text, conditioners=[plain], context=context)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    base = tiny_sd_prior.predict_noise(z, t, text)
    assert torch.equal(ours[0], base[0])  # the unconditional branch has no image attention
    assert (ours[1] - base[1]).abs().max() > 1e-3


def test_grounded_tokens_follow_the_phrase_and_box_and_ungrounded_ones_do_not(tiny_sd_prior):
    state = ms_state(tiny_sd_prior.unet)
    both = conditioner(tiny_sd_prior, state, [[-0.3] * 3] * 2, [[0.3] * 3] * 2, phrases=(True, False))
    left, right = torch.tensor([[[0.0, 0.0, 0.5, 1.0]] * 2]), torch.tensor([[[0.5, 0.0, 1.0, 1.0]] * 2])
    a, b = both.subject_tokens(left).view(2, 3, -1), both.subject_tokens(right).view(2, 3, -1)
    assert (a[0] - b[0]).abs().max() > 1e-3  # the grounded subject's queries read its box
    assert torch.equal(a[1], b[1])  # without a phrase: the learned queries


@pytest.fixture
def attention_module():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=8, cross_attention_dim=TEXT_DIM, heads=2, dim_head=4).eval()


def layout_hook(attn, tokens, boxes, scale=1.0):
    torch.manual_seed(1)
    layer = IPAdapterLayer(TEXT_DIM, 8)
    return LayoutCrossAttention({"layer": layer}, tokens, boxes, (4, 4), scale)


def test_queries_outside_every_box_get_exactly_the_text_attention(attention_module):
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 16, 8, generator=generator)  # a 4 x 4 layer
    text = torch.randn(2, 6, TEXT_DIM, generator=generator)
    tokens = torch.randn(2, 6, TEXT_DIM, generator=generator)  # two subjects of three tokens
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 0.75, 1.0]]] * 2)
    with torch.no_grad():
        text_only = attend(attention_module, hidden, text, None, None, [AttentionHook()], "layer")
        ours = attend(attention_module, hidden, text, None, None, [layout_hook(attention_module, tokens, boxes)],
                      "layer")
    inside = box_token_masks(boxes, 16, 4, 4).any(-1)
    assert inside[0].sum() == 4 + 2 and not inside.all()
    assert torch.equal(ours[~inside], text_only[~inside])
    assert (ours[inside] - text_only[inside]).abs().amin(-1).max() > 1e-4
    # a query inside only the first box reads only the first subject's tokens
    first_only = attend(attention_module, hidden, text, None, None,
                        [layout_hook(attention_module, tokens[:, :3], boxes[:, :1])], "layer")
    in_first = box_token_masks(boxes[:, :1], 16, 4, 4)[..., 0]
    torch.testing.assert_close(ours[in_first], first_only[in_first], atol=1e-6, rtol=0)


def test_box_masks_round_outwards_to_patches_as_published():
    masks = box_token_masks(torch.tensor([[[0.25, 0.25, 0.75, 0.75], [0.1, 0.0, 0.3, 0.5]]]), 16, 4, 4)
    grid = masks[0].T.view(2, 4, 4).int()
    assert grid[0].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert grid[1].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # floor(0.4), ceil(1.2)
    wide = box_token_masks(torch.tensor([[[0.5, 0.0, 1.0, 1.0]]]), 8, 2, 4)  # a 2 x 4 layer of a 2:4 image
    assert wide[0, :, 0].view(2, 4).int().tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_projected_boxes_sit_where_the_box_is_seen():
    front = Cameras.from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([2.0]),
                                   torch.tensor([40.0]), 32)
    lower = torch.tensor([[-0.2, -0.2, -0.2], [0.2, 0.2, -0.1]])
    upper = torch.tensor([[0.2, 0.2, 0.2], [0.5, 0.5, 0.1]])
    centred, upper_right = projected_boxes(lower, upper, front)[0]
    torch.testing.assert_close(centred[:2] + centred[2:], torch.ones(2), atol=1e-6, rtol=0)
    half = 0.2 / 1.8 / np.tan(np.radians(20))  # the near face's half-width, in half-images
    torch.testing.assert_close(centred[2], torch.tensor(0.5 + 0.5 * half, dtype=torch.float32), atol=1e-5, rtol=0)
    assert upper_right[0] > 0.5 and upper_right[3] < 0.5  # +X is right, +Y is up (row 0 on top)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subjects")
    Image.fromarray(np.full((24, 24, 3), (240, 128, 25), np.uint8)).save(folder / "orange.png")
    Image.fromarray(np.full((24, 24, 3), (20, 60, 220), np.uint8)).save(folder / "blue.png")
    (folder / "ms_adapter.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "box(0,0,0,0.5,0.5,0.5): missing.png"], "--subject image missing.png does not exist"),
        (["--subject", "box(0,0,0,0.5,0.5): orange.png"], "cannot read 'box(0,0,0,0.5,0.5)'"),
        (["--subject", "box(0.5,0,0,0,0.5,0.5): orange.png"], "each lower corner value below the upper one"),
        (["--subject", "box(0.6,0,0,0.9,0.5,0.5): orange.png"], "its box lies outside the scene"),
        (["--subject", "orange.png"], "is not 'EXPRESSION: IMAGE[=PHRASE]'"),
        (["--subject", "y>0: orange.png"], "--subject needs --ms-adapter"),
        (["--subject", "y>0: orange.png", "--ms-adapter", "none.bin"], "--ms-adapter none.bin does not exist"),
        (["--subject", "y>0: orange.png", "--ms-adapter", "ms_adapter.safetensors", "--subject-scale", "-1"],
         "--subject-scale must be >= 0"),
        (["--ms-adapter", "ms_adapter.safetensors"], "--ms-adapter needs --subject"),
    ],
)
def test_bad_subjects_are_one_line_before_torch_loads(files, args, message, monkeypatch):
    monkeypatch.chdir(files)
    result, stderr = probe_cli("generate", "a dog and a cat", *args)
    assert result == {"code": 1, "torch": False, "diffusers": False}, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 2


def test_two_subjects_make_an_asset_end_to_end(files, tiny_sd_dir, tiny_sd_prior, tmp_path):
    checkpoint = save_ms_safetensors(ms_state(tiny_sd_prior.unet, seed=4), tmp_path / "ms" / "ms_adapter.safetensors")
    tiny_clip_vision(checkpoint.parent / "image_encoder")
    out = tmp_path / "run"
    left = f"box(-0.5,-0.5,-0.5,0,0.5,0.5): {files / 'orange.png'}=dog"
    result = cli("generate", "a dog and a cat", "--subject", left,
                 "--subject", f"x>0: {files / 'blue.png'}", "--ms-adapter", str(checkpoint.parent),
                 "--subject-scale", "0.7", "--model", str(tiny_sd_dir), "--steps", "2", "--out", str(out), "--quiet",
                 *SMALL)
    assert result.returncode == 0, result.stderr
    spec, = yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["guidance"]["conditioners"]
    assert spec["name"] == "multi_subject" and spec["scale"] == 0.7 and spec["path"] == str(checkpoint.parent)
    assert spec["subjects"] == [f"box(-0.5,-0.5,-0.5,0,0.5,0.5): {files / 'orange.png'}=dog",
                                f"x>0: {files / 'blue.png'}"]


def test_loads_for_sdxl_with_phrases_and_refuses_another_base_model(tiny_sd_prior, tiny_sdxl_dir, tmp_path):
    from dreamsmith.errors import ConfigError
    from dreamsmith.guidance.loading import load_prior
    from dreamsmith.guidance.ms_diffusion_loading import subject_prompt
    from dreamsmith.regions import parse_subject

    prior = load_prior(tiny_sdxl_dir)  # the published weights' base: cross-attention over both encoders (64 wide)
    checkpoint = save_ms_safetensors(ms_state(prior.unet, seed=5), tmp_path / "xl" / "ms_adapter.safetensors")
    tiny_clip_vision(checkpoint.parent / "image_encoder")
    subjects = [parse_subject("x<0: a.png=a dog"), parse_subject("x>0: b.png")]
    images = [np.full((16, 16, 3), 0.8, np.float32), np.full((16, 16, 3), 0.2, np.float32)]
    built = subject_prompt(checkpoint, subjects, images, prior, scale=0.6)
    assert built.grounded.tolist() == [True, False] and built.hidden_states.shape[0] == 2
    assert built.phrase_embeds[1].abs().max() == 0 and built.phrase_embeds[0].abs().max() > 0
    generator = torch.Generator().manual_seed(6)
    z, t = torch.randn(2, 4, 4, 4, generator=generator), torch.tensor([400, 400])
    packed = prior.encode_prompts(["a dog and a cat", "a dog and a cat"])
    context = ConditionContext(cameras=front_cameras())
    base = prior.predict_noise(z, t, packed)
    assert (prior.predict_noise(z, t, packed, conditioners=[built], context=context) - base).abs().max() > 1e-3
    built.scale = 0.0
    assert torch.equal(prior.predict_noise(z, t, packed, conditioners=[built], context=context), base)
    other = save_ms_safetensors(ms_state(tiny_sd_prior.unet), tmp_path / "sd" / "ms_adapter.safetensors")
    tiny_clip_vision(other.parent / "image_encoder")
    with pytest.raises(ConfigError, match="another base model: its image tokens are 32 wide"):
        subject_prompt(other, subjects, images, prior)
    wide = save_ms_safetensors(ms_state(prior.unet, phrase_dim=48), tmp_path / "wide" / "ms_adapter.safetensors")
    tiny_clip_vision(wide.parent / "image_encoder")
    with pytest.raises(ConfigError, match="reads 48-wide phrase embeddings, the model's text encoder gives 32"):
        subject_prompt(wide, subjects, images, prior)


def published_masked_attention(query, key, value, boxes, tokens_per_subject, dummies):
    """MS-Diffusion's MaskedIPAttnProcessor2_0 image branch, restated: dummy tokens for queries outside every box,
    each subject's tokens for the queries in its box (a -10000 bias elsewhere), background probabilities zeroed."""
    length = query.shape[2]
    side = int(length ** 0.5)
    start, end = torch.floor(boxes[..., :2] * side), torch.ceil(boxes[..., 2:] * side)
    index = torch.arange(side)
    box_masks, background = [], torch.ones(boxes.shape[0], length)
    for s in range(boxes.shape[1]):
        x = ((index >= start[:, s, :1]) & (index < end[:, s, :1])).float()
        y = ((index >= start[:, s, 1:]) & (index < end[:, s, 1:])).float()
        box = torch.bmm(y.unsqueeze(2), x.unsqueeze(1)).reshape(boxes.shape[0], -1)
        box_masks.append(box)
        background = torch.clamp(background - box, min=0)
    allowed = torch.cat([background.unsqueeze(-1).repeat_interleave(dummies, -1),
                         torch.stack(box_masks, -1).repeat_interleave(tokens_per_subject, -1)], -1)
    scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5 + ((1 - allowed) * -10000.0)[:, None]
    probs = torch.where(background.bool()[:, None, :, None], 0.0, scores.softmax(-1))
    out = probs @ value
    return out.transpose(1, 2).reshape(out.shape[0], length, -1)


def test_layout_attention_equals_the_published_processor_whose_dummy_tokens_never_reach_the_output():
    generator = torch.Generator().manual_seed(8)
    query = torch.randn(2, 2, 16, 4, generator=generator)
    key, value = (torch.randn(2, 2, 4 + 2 * 3, 4, generator=generator) for _ in range(2))  # 4 dummies, 2 × 3
    boxes = torch.tensor([[[0.0, 0.0, 0.6, 0.5], [0.4, 0.3, 1.0, 0.9]], [[0.1, 0.1, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]])
    hook = LayoutCrossAttention({}, torch.zeros(2, 6, 1), boxes, (4, 4), 1.0)
    ours = hook.image_attention(query, key[:, :, 4:], value[:, :, 4:])
    expected = published_masked_attention(query, key, value, boxes, 3, 4)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert expected.abs().amax(-1).gt(0).sum() > 8  # overlapping boxes, a small box, an empty one: not all zero
