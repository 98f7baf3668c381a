"""Prompt-to-Prompt: token mappers, the attention controller in the processor stack, and the p2p guidance."""

from __future__ import annotations

import pytest
import torch

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.attention import AttentionHook
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner
from dreamsmith.guidance.math import p2p_cross_attention
from dreamsmith.guidance.p2p import P2PConfig, P2PGuidance, PromptToPrompt
from dreamsmith.guidance.p2p_tokens import edit_mapper, equalizer, refine_mapper, swap_mapper, word_spans
from dreamsmith.prompt_words import parse_reweight
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput

LABELS = ("cond", "cond", "source", "source", "uncond", "uncond")  # the core's call layout, last branch first


class RecordCrossAttention(AttentionHook):
    """Keeps every cross-attention map it sees (after the hooks before it)."""

    needs_probabilities = True

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def applies_to(self, name, attn):
        return bool(attn.is_cross_attention)

    def probabilities(self, attn, probs, context):
        self.maps.append(probs.clone())
        return probs


class Recorder(Conditioner):
    def __init__(self) -> None:
        self.hook = RecordCrossAttention()

    def attention_hooks(self, context):
        return [self.hook]


def call_inputs(prior, source: str, edited: str, t: int):
    """z_t (different latents in every sample), t and embeddings of a call laid out as ``LABELS``."""
    z_t = torch.randn(6, 4, 4, 4, generator=torch.Generator().manual_seed(11))
    embeds = prior.encode_prompts([edited, edited, source, source, "", ""])
    context = ConditionContext(branch_labels=LABELS)
    return z_t, torch.full((6,), t), embeds, context


def test_an_empty_controller_is_the_models_own_attention(tiny_sd_prior):
    z_t, t, embeds, context = call_inputs(tiny_sd_prior, "a red cube", "a blue cube", 900)
    bare = tiny_sd_prior.predict_noise(z_t, t, embeds, context=context)
    empty = tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[PromptToPrompt()], context=context)
    assert torch.equal(empty, bare)  # nothing to do installs nothing: the default processor, bit for bit
    # a controller that goes through the explicit-probability path but changes nothing (weights of 1)
    ones = PromptToPrompt(scale=torch.ones(tiny_sd_prior.max_prompt_tokens()))
    torch.testing.assert_close(
        tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[ones], context=context), bare, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    ("source", "edited"), [("a red cube", "a tan cube"), ("a red cube", "a blue cube"), ("a cube", "a red cube")]
)
def test_with_cross_replace_at_one_the_edited_maps_are_the_mapped_source_maps(tiny_sd_prior, source, edited):
    length = tiny_sd_prior.max_prompt_tokens()
    mapper, own = edit_mapper(tiny_sd_prior.tokenizer, source, edited, length)
    z_t, t, embeds, context = call_inputs(tiny_sd_prior, source, edited, 900)
    for cross_replace, replaced in ((1.0, True), (0.0, False)):
        recorder = Recorder()
        control = PromptToPrompt(mapper, own, cross_replace=cross_replace)
        tiny_sd_prior.predict_noise(z_t, t, embeds, conditioners=[control, recorder], context=context)
        assert len(recorder.hook.maps) == 4  # the cross-attention of each of the four transformer blocks
        for probs in recorder.hook.maps:
            expected = p2p_cross_attention(probs[2:4], probs[0:2], mapper, own)
            assert torch.equal(probs[0:2], expected) == replaced


def test_the_p2p_guidance_replaces_at_every_step_within_its_range(tiny_sd_prior):
    rgb = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    render = RenderOutput(rgb=rgb, opacity=torch.ones(2, 16, 16, 1), depth=torch.full((2, 16, 16, 1), 2.0))
    cameras = Cameras.from_spherical(
        torch.tensor([0.0, 90.0]), torch.full((2,), 15.0), torch.tensor(2.0), torch.tensor(40.0), 16
    )
    mapper, own = edit_mapper(tiny_sd_prior.tokenizer, "a red cube", "a blue cube", tiny_sd_prior.max_prompt_tokens())
    for cross_replace in (1.0, 0.0):
        recorder = Recorder()
        guidance = P2PGuidance(
            tiny_sd_prior,
            P2PConfig(prompt="a blue cube", source_prompt="a red cube", cross_replace=cross_replace),
            [recorder],
        )
        for step in range(3):
            guidance(render, cameras, step, torch.Generator().manual_seed(step))
        assert len(recorder.hook.maps) == 3 * 4
        for probs in recorder.hook.maps:  # the call holds [cond × 2, source × 2, uncond × 2]
            same = torch.equal(probs[0:2], p2p_cross_attention(probs[2:4], probs[0:2], mapper, own))
            assert same == (cross_replace == 1.0)


def test_generate_weights_words_of_the_prompt_with_p2p_and_no_source_prompt(tiny_sd_dir, tmp_path):
    from test_generate import SMALL

    from dreamsmith.engine.overrides import make_config
    from dreamsmith.engine.run import generate

    config = make_config(
        "a red cube",
        model=str(tiny_sd_dir),
        steps=1,
        seed=2,
        overrides=[*SMALL, "guidance.name=p2p", "guidance.reweight={red: 3.0}"],
    )
    report = generate(config, tmp_path / "run")
    assert report["final_losses"]["cross_replace"] == 0.8 and (tmp_path / "run" / "asset.glb").is_file()
    bad = make_config(
        "a red cube",
        model=str(tiny_sd_dir),
        steps=1,
        overrides=[*SMALL, "guidance.name=p2p", "guidance.reweight={blue: 3.0}"],
    )
    with pytest.raises(ConfigError, match="'blue' is not a word of the prompt 'a red cube'"):
        generate(bad, tmp_path / "bad")


def test_token_mappers_follow_the_words(tiny_sd_prior):
    tokenizer, length = tiny_sd_prior.tokenizer, tiny_sd_prior.max_prompt_tokens()
    assert word_spans(tokenizer, "a red cube") == [(1, 2), (2, 5), (5, 9)]  # the tiny vocabulary: one per letter
    mapper, own = swap_mapper(tokenizer, "a red cube", "a tan cube", length)
    assert torch.equal(mapper, torch.eye(length)) and not own.any()  # same token counts: position for position
    mapper, own = swap_mapper(tokenizer, "a red cube", "a blue cube", length)
    assert torch.allclose(mapper[2:5, 2:6], torch.full((3, 4), 0.25))  # "red" spread over "blue"
    assert mapper[5, 6] == mapper[8, 9] == mapper[9, 10] == 1  # "cube" and the end token shifted by one
    # each of "blue"'s tokens gets a quarter of each of "red"'s three (the paper's code spreads them so)
    expected = torch.ones(length - 1)
    expected[2:6] = 0.75
    assert torch.allclose(mapper.sum(0)[: length - 1], expected) and not own.any()
    mapper, own = refine_mapper(tokenizer, "a cube", "a red cube", length)
    assert own[2:5].tolist() == [1, 1, 1] and own[:2].sum() == 0 and own[5:].sum() == 0  # "red" is new
    assert mapper[0, 0] == mapper[1, 1] == mapper[2, 5] == mapper[5, 8] == 1 and mapper[:, 2:5].sum() == 0
    with pytest.raises(ConfigError, match="as many words"):
        swap_mapper(tokenizer, "a cube", "a red cube", length)


def test_reweighting_scales_the_words_maps_and_refuses_a_word_not_in_the_prompt(tiny_sd_prior):
    length = tiny_sd_prior.max_prompt_tokens()
    scale = equalizer(tiny_sd_prior.tokenizer, "a red cube", {"red": 2.0}, length)
    assert scale.tolist() == [1, 1, 2, 2, 2] + [1] * (length - 5)
    z_t, t, embeds, context = call_inputs(tiny_sd_prior, "a red cube", "a red cube", 900)
    before, after = Recorder(), Recorder()  # the maps each layer computed, and what the controller made of them
    tiny_sd_prior.predict_noise(
        z_t, t, embeds, conditioners=[before, PromptToPrompt(scale=scale), after], context=context
    )
    for seen, weighted in zip(before.hook.maps, after.hook.maps, strict=True):
        assert torch.equal(weighted[0:2], seen[0:2] * scale)  # the edited samples' "red" columns doubled
        assert torch.equal(weighted[2:], seen[2:])  # the source and unconditional samples untouched
    with pytest.raises(ConfigError, match="--reweight 'fluffy' is not a word of the prompt 'a red cube'"):
        equalizer(tiny_sd_prior.tokenizer, "a red cube", {"fluffy": 2.0}, length)
    assert parse_reweight("fluffy=2.5") == ("fluffy", 2.5)
    with pytest.raises(ConfigError, match="is not WORD=WEIGHT"):
        parse_reweight("fluffy")
