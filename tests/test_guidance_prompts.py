"""View-dependent prompting and the prompt-embedding cache."""

from __future__ import annotations

import pytest
import torch

from dreamsmith.guidance.prompts import PromptCache, view_direction, view_prompt


@pytest.mark.parametrize(
    ("azimuth", "elevation", "expected"),
    [
        (0.0, 0.0, "front"),
        (44.9, 30.0, "front"),
        (-44.9, 0.0, "front"),
        (45.0, 0.0, "side"),
        (90.0, 0.0, "side"),
        (-90.0, 0.0, "side"),
        (135.0, 0.0, "side"),
        (135.1, 0.0, "back"),
        (180.0, 0.0, "back"),
        (-180.0, 0.0, "back"),
        (200.0, 0.0, "back"),
        (350.0, 0.0, "front"),
        (-350.0, 0.0, "front"),
        (270.0, 0.0, "side"),
        (180.0, 60.0, "back"),
        (180.0, 60.1, "overhead"),
        (0.0, 89.0, "overhead"),
    ],
)
def test_view_direction_thresholds(azimuth, elevation, expected):
    assert view_direction([azimuth], [elevation]) == [expected]


def test_view_direction_custom_thresholds_and_tensor_batches():
    azimuth = torch.tensor([0.0, 40.0, 160.0, 100.0])
    elevation = torch.tensor([0.0, 0.0, 0.0, 35.0])
    assert view_direction(
        azimuth, elevation, front_threshold=30, back_threshold=30, overhead_threshold=30
    ) == [
        "front",
        "side",
        "back",
        "overhead",
    ]


def test_view_prompt_appends_the_direction():
    assert view_prompt("a hamburger", "front") == "a hamburger, front view"
    assert view_prompt("a hamburger", "overhead") == "a hamburger, overhead view"
    assert view_prompt("a hamburger", None) == "a hamburger"
    with pytest.raises(ValueError, match="backside"):
        view_prompt("a hamburger", "backside")


class CountingEncoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return torch.stack([torch.full((3, 2), float(len(text))) for text in prompts])


def test_prompt_cache_encodes_each_prompt_and_direction_once():
    encoder = CountingEncoder()
    cache = PromptCache(encoder)
    first = cache.text_embeddings("a cat", ["front", "side", "front"])
    second = cache.text_embeddings("a cat", ["side", "back", "front", "back"])
    cache.negative_embeddings("", 4)
    cache.negative_embeddings("", 2)
    cache.text_embeddings("a cat", [None])
    assert encoder.calls == [
        ["a cat, front view", "a cat, side view"],
        ["a cat, back view"],
        [""],
        ["a cat"],
    ]
    assert first.shape == (3, 3, 2)
    assert first[:, 0, 0].tolist() == [
        len("a cat, front view"),
        len("a cat, side view"),
        len("a cat, front view"),
    ]
    assert second[:, 0, 0].tolist() == [16.0, 16.0, 17.0, 16.0]
    assert cache.negative_embeddings("", 5).shape == (5, 3, 2)
    assert len(encoder.calls) == 4


def test_prompt_cache_with_a_real_prior_matches_direct_encoding(tiny_sd_prior):
    cache = PromptCache(tiny_sd_prior)
    cached = cache.text_embeddings("a hamburger", ["front", "back"])
    direct = tiny_sd_prior.encode_prompts(["a hamburger, front view", "a hamburger, back view"])
    assert torch.equal(cached, direct)
