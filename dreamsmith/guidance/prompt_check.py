"""Prompts a model cannot draw: refused with a message instead of optimized into a blob."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from dreamsmith.errors import DreamsmithError
from dreamsmith.prompt_images import has_images, text_words


def normalize_prompt(prompt: str) -> str:
    """Lower case, single spaces, no final full stop, and "an" read as "a"."""
    text = re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".")
    return re.sub(r"\ban\b", "a", text)


IMAGE_PROMPTS = ("ip_adapter",)
"""Conditioners that prompt with an image: with one, the text prompt may be empty."""


def image_prompted(conditioners: list[dict[str, Any]]) -> bool:
    """Whether a guidance's ``conditioners`` entries include an image prompt."""
    return any(isinstance(spec, dict) and spec.get("name") in IMAGE_PROMPTS for spec in conditioners)


def check_prompt(prompt: str, prior: Any, image_prompt: bool = False, new_words: Sequence[str] = ()) -> None:
    """Refuse an empty prompt (unless an image prompts), and prompts outside a closed-vocabulary model's known
    captions; a prompt that uses a word an adapter teaches the model (``new_words``, e.g. "<sks>") is the
    user's to judge. A prompt with ``<image:PATH>`` placeholders (a multimodal prompt) must use only words of the
    known captions around them: the images stand for what the captions name."""
    if image_prompt and not prompt.strip():
        return  # the image alone says what to make; the text branch is the empty prompt
    if not prompt or not prompt.strip():
        raise DreamsmithError("the prompt is empty; say what to make, e.g. dreamsmith generate \"a red cube\"")
    known = getattr(prior, "known_prompts", None)
    if not known or set(prompt.lower().split()) & {word.lower() for word in new_words}:
        return
    if has_images(prompt):
        vocabulary = {word for caption in known for word in normalize_prompt(caption).split()} | {"an"}
        unknown = [word for word in dict.fromkeys(text_words(prompt.lower())) if word not in vocabulary]
        if unknown:
            raise DreamsmithError(f"this model knows only the words of its {len(known)} captions "
                                  f"({', '.join(sorted(vocabulary))}); '{' '.join(unknown)}' around the prompt's "
                                  "images is not among them")
        return
    if normalize_prompt(prompt) not in {normalize_prompt(p) for p in known}:
        examples = ", ".join(f"'{p}'" for p in known[:: max(1, len(known) // 4)][:4])
        raise DreamsmithError(
            f"this model knows only its {len(known)} captions (e.g. {examples}) and cannot draw '{prompt}'. "
            "For other prompts pass --model with a diffusers folder or Hugging Face id "
            "(e.g. --model stabilityai/stable-diffusion-2-1-base)."
        )
