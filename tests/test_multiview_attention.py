"""Multi-view attention: views of a group attend to each other in self-attention, and only there."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.attention import hooked_processors, hooks_active
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.multiview import MultiViewAttention, MultiViewConditioner, model_conditioners


@pytest.fixture(scope="module")
def inputs(tiny_sd_prior):
    generator = torch.Generator().manual_seed(0)
    z_t = torch.randn(8, 4, 4, 4, generator=generator)  # two groups of four views
    t = torch.full((8,), 500)
    embeds = tiny_sd_prior.encode_prompts(["a cat"] * 8)
    return z_t, t, embeds


def test_one_view_per_group_is_bit_identical_to_the_models_own_attention(tiny_sd_prior, inputs):
    z_t, t, embeds = inputs
    bare = tiny_sd_prior.predict_noise(z_t, t, embeds)
    single = tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[MultiViewConditioner(1)])
    assert torch.equal(single, bare)


def reference_self_attention(attn: torch.nn.Module, x: torch.Tensor, views: int) -> torch.Tensor:
    """MVDream's folded self-attention written out: ``(b f) l c -> b (f l) c``, softmax(qkᵀ/√d) v per
    head, unfold, output projection."""
    batch, length, channels = x.shape
    folded = x.reshape(batch // views, views * length, channels)
    heads = attn.heads

    def split(y: torch.Tensor) -> torch.Tensor:
        return y.reshape(y.shape[0], y.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(attn.to_q(folded)), split(attn.to_k(folded)), split(attn.to_v(folded))
    weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    out = (weights @ v).transpose(1, 2).reshape(batch // views, views * length, -1)
    return attn.to_out[0](out.reshape(batch, length, -1))


def test_four_views_match_the_folded_attention_written_out(tiny_sd_prior):
    unet = tiny_sd_prior.unet
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    x = torch.randn(8, 16, block.attn1.to_q.in_features, generator=torch.Generator().manual_seed(1))
    hooked_processors(unet)
    with hooks_active(unet, [MultiViewAttention(4)]):
        got = block.attn1(x)
        cross = block.attn2(x, encoder_hidden_states=torch.randn(8, 5, block.attn2.to_k.in_features))
    with torch.no_grad():
        want = reference_self_attention(block.attn1, x, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        per_view = reference_self_attention(block.attn1, x, 1)
    assert (got - per_view).abs().max() > 1e-3  # the views did see each other
    assert cross.shape == x.shape  # cross-attention is left per view


def test_views_share_information_within_a_group_and_never_across_groups(tiny_sd_prior, inputs):
    z_t, t, embeds = inputs
    multiview = [MultiViewConditioner(4)]
    before = tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=multiview)
    changed = z_t.clone()
    changed[0] += 1.0  # first view of the first group
    after = tiny_sd_prior.predict_noise(changed, t, embeds, conditioners=multiview)
    assert (after[1:4] - before[1:4]).abs().max() > 1e-4  # its group's other views react
    assert torch.equal(after[4:], before[4:])  # the other group does not
    alone = tiny_sd_prior.predict_noise(changed, t, embeds)
    assert torch.equal(alone[1:], tiny_sd_prior.predict_noise(z_t, t, embeds)[1:])


def test_a_batch_of_partial_groups_is_refused(tiny_sd_prior, inputs):
    z_t, t, embeds = inputs
    with pytest.raises(ValueError, match="groups of 4 views got a batch of 6"):
        tiny_sd_prior.predict_noise(z_t[:6], t[:6], embeds[:6], conditioners=[MultiViewConditioner(4)])


def test_a_model_naming_multiview_attention_applies_it_to_every_call(tiny_sd_dir, tmp_path, tiny_sd_prior, inputs):
    folder = shutil.copytree(tiny_sd_dir, tmp_path / "mv")
    (folder / "dreamsmith.json").write_text(json.dumps({"attention": "multiview", "views_per_group": 4}))
    prior = load_prior(folder)
    assert prior.views_per_group == 4 and tiny_sd_prior.views_per_group == 1
    z_t, t, embeds = inputs
    expected = tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[MultiViewConditioner(4)])
    assert torch.equal(prior.predict_noise(z_t, t, embeds), expected)


@pytest.mark.parametrize(("metadata", "message"), [
    ({"attention": "sparse"}, "unknown attention 'sparse'"),
    ({"attention": "multiview"}, "needs views_per_group"),
    ({"attention": "multiview", "views_per_group": 0}, "needs views_per_group"),
])
def test_a_bad_attention_entry_is_one_clear_error(metadata, message):
    with pytest.raises(ModelLoadError, match=message):
        model_conditioners(metadata)
