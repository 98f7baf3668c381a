"""The adapter and processor stack on a shared prior: attention hooks that chain, named LoRA adapters
(peft), time-embedding deltas. Off, at scale 0 or at init each leaves the output bit-identical; two at
once compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.attention import AttentionHook, HookedAttnProcessor, hooked_processors
from dreamsmith.guidance.conditioners import Conditioner
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.lora import (
    LoRAConditioner,
    add_lora,
    load_lora_file,
    lora_names,
    lora_state_dict,
    loras_active,
)


@pytest.fixture
def prior(tiny_sd_dir):
    """A fresh copy of the tiny SD prior (adapters installed here stay in this test)."""
    return load_prior(tiny_sd_dir)


@pytest.fixture
def inputs(prior):
    generator = torch.Generator().manual_seed(4)
    z_t = torch.randn(2, 4, 4, 4, generator=generator)
    return z_t, torch.tensor([300, 800]), prior.encode_prompts(["a cat", ""])


class Scale(AttentionHook):
    """Multiplies attended features by ``factor`` (powers of two are exact) and counts its calls."""

    def __init__(self, factor: float, self_attention_only: bool = False) -> None:
        self.factor = factor
        self.self_attention_only = self_attention_only
        self.calls = 0

    def applies_to(self, name, attn):
        return not (self.self_attention_only and attn.is_cross_attention)

    def output(self, attn, hidden_states, context):
        self.calls += 1
        return hidden_states * self.factor


class Probabilities(AttentionHook):
    """Reads the softmax maps (forcing the explicit path) without changing them."""

    needs_probabilities = True

    def __init__(self) -> None:
        self.row_sums: list[torch.Tensor] = []

    def probabilities(self, attn, probs, context):
        self.row_sums.append(probs.sum(-1))
        return probs


class Hooks(Conditioner):
    def __init__(self, *hooks: AttentionHook) -> None:
        self.hooks = hooks

    def attention_hooks(self, context):
        return self.hooks


def test_attention_hooks_leave_the_model_bit_identical_until_they_change_something(prior, inputs):
    bare = prior.predict_noise(*inputs)
    identity = Scale(1.0)
    assert torch.equal(prior.predict_noise(*inputs, conditioners=[Hooks(identity)]), bare)
    assert identity.calls == 8  # the explicit path ran in each of the 8 attention modules
    assert all(isinstance(p, HookedAttnProcessor) for p in prior.unet.attn_processors.values())
    assert all(not p.hooks for p in hooked_processors(prior.unet).values())  # nothing left active
    assert torch.equal(prior.predict_noise(*inputs), bare)
    reader = Probabilities()
    torch.testing.assert_close(prior.predict_noise(*inputs, conditioners=[Hooks(reader)]), bare, atol=1e-6, rtol=0)
    assert len(reader.row_sums) == 8
    assert all(torch.allclose(s, torch.ones_like(s), atol=1e-5) for s in reader.row_sums)


def test_two_conditioners_hooks_chain_on_every_module(prior, inputs):
    bare = prior.predict_noise(*inputs)
    half, double = Scale(0.5), Scale(2.0, self_attention_only=True)
    only_self = prior.predict_noise(*inputs, conditioners=[Hooks(double)])
    assert not torch.allclose(only_self, bare)
    assert double.calls == 4  # the 4 self-attention modules only
    both = prior.predict_noise(*inputs, conditioners=[Hooks(half), Hooks(double)])
    assert not torch.allclose(both, prior.predict_noise(*inputs, conditioners=[Hooks(Scale(0.5))]))
    # self-attention: x0.5 then x2 cancel exactly; cross-attention: x0.5 only
    cross_half = type("CrossHalf", (Scale,), {"applies_to": lambda self, n, a: a.is_cross_attention})(0.5)
    assert torch.equal(both, prior.predict_noise(*inputs, conditioners=[Hooks(cross_half)]))
    assert (half.calls, double.calls) == (8, 8)


def test_lora_at_init_at_scale_zero_and_switched_off_is_the_base_model(prior, inputs):
    bare = prior.predict_noise(*inputs)
    params = add_lora(prior.unet, "style", rank=2)
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert lora_names(prior.unet) == {"style"}
    assert torch.equal(prior.predict_noise(*inputs), bare)  # installed but not named: off
    assert torch.equal(prior.predict_noise(*inputs, conditioners=[LoRAConditioner("style")]), bare)  # B = 0
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(p.shape)))
    on = prior.predict_noise(*inputs, conditioners=[LoRAConditioner("style")])
    assert not torch.allclose(on, bare)
    assert torch.equal(prior.predict_noise(*inputs, conditioners=[LoRAConditioner("style", 0.0)]), bare)
    assert torch.equal(prior.predict_noise(*inputs), bare)
    assert all(p.requires_grad for p in params)  # switching adapters never touches training flags


def test_two_loras_compose_and_each_keeps_its_own_scale(prior, inputs):
    for name, seed in (("subject", 1), ("style", 2)):
        for p in add_lora(prior.unet, name, rank=2):
            with torch.no_grad():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
    with loras_active(prior.unet, {"subject": 1.0, "style": 0.5}):
        together = prior.predict_noise(*inputs)
    stacked = prior.predict_noise(*inputs, conditioners=[LoRAConditioner("subject"), LoRAConditioner("style", 0.5)])
    assert torch.equal(stacked, together)
    alone = prior.predict_noise(*inputs, conditioners=[LoRAConditioner("subject")])
    assert not torch.allclose(stacked, alone)
    # a LoRA and attention hooks at once: the identity hook changes nothing on top of the LoRA
    hooked = prior.predict_noise(*inputs, conditioners=[LoRAConditioner("subject"), Hooks(Scale(1.0))])
    assert torch.equal(hooked, alone)
    with pytest.raises(ConfigError, match="already has a LoRA adapter named 'style'"):
        add_lora(prior.unet, "style")
    with pytest.raises(ConfigError, match="no LoRA adapter named 'missing'"):
        prior.predict_noise(*inputs, conditioners=[LoRAConditioner("missing")])


def test_lora_files_in_the_diffusers_layout_round_trip(tiny_sd_dir, inputs, tmp_path):
    source = load_prior(tiny_sd_dir)
    for p in add_lora(source.unet, "mine", rank=3):
        with torch.no_grad():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(7))
    expected = source.predict_noise(*inputs, conditioners=[LoRAConditioner("mine", 0.7)])
    weights = {f"unet.{k}": v for k, v in lora_state_dict(source.unet, "mine").items()}
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in weights)
    save_file(weights, tmp_path / "pytorch_lora_weights.safetensors")

    target = load_prior(tiny_sd_dir)
    name = load_lora_file(target.unet, tmp_path)
    assert name == "pytorch_lora_weights"
    assert torch.equal(target.predict_noise(*inputs, conditioners=[LoRAConditioner(name, 0.7)]), expected)
    assert not any(p.requires_grad for n, p in target.unet.named_parameters() if "lora_" in n)


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda path: path.write_bytes(b"not safetensors"), "cannot read the LoRA file"),
        (lambda path: save_file({"lora_unet_down.alpha": torch.ones(1)}, path), "not a UNet LoRA"),
        (None, "no LoRA weights at"),
    ],
)
def test_bad_lora_files_are_one_line_errors(prior, tmp_path, write, message):
    path = tmp_path / "bad.safetensors"
    if write is not None:
        write(path)
    with pytest.raises(ConfigError, match=message):
        load_lora_file(prior.unet, path)


class CameraShift(Conditioner):
    def __init__(self, delta: torch.Tensor) -> None:
        self.delta = delta

    def time_embedding_delta(self, context, batch):
        return self.delta.expand(batch, -1)


def test_time_embedding_deltas_add_to_the_time_embedding_for_the_call_only(prior, inputs):
    bare = prior.predict_noise(*inputs)
    width = prior.unet.time_embedding.linear_2.out_features
    assert torch.equal(prior.predict_noise(*inputs, conditioners=[CameraShift(torch.zeros(1, width))]), bare)
    shifted = prior.predict_noise(*inputs, conditioners=[CameraShift(torch.full((1, width), 0.5))])
    assert not torch.allclose(shifted, bare)
    twice = prior.predict_noise(*inputs, conditioners=[CameraShift(torch.full((1, width), 0.25))] * 2)
    torch.testing.assert_close(twice, shifted)  # deltas of several conditioners add up
    assert torch.equal(prior.predict_noise(*inputs), bare)
    assert not prior.unet.time_embedding._forward_hooks


def test_weights_file_of_the_fixture_is_untouched(tiny_sd_dir: Path):
    assert not lora_names(load_prior(tiny_sd_dir).unet)  # adapters live on loaded copies, never on disk
