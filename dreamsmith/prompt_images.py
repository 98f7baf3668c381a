"""Images inside a prompt (KOSMOS-G's multimodal prompts): ``"a <image:REF.png> made of gold"``, read without torch.

Each ``<image:PATH>`` names an image file (relative to the working directory); at run time the model's aligner
turns it into K word embeddings that take the placeholder's place (:mod:`dreamsmith.guidance.multimodal_prompt`).
Here: finding the placeholders, refusing a malformed one or an unreadable image in one line, the words around
them, and writing the placeholders as the words that stand for them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from dreamsmith.errors import DreamsmithError
from dreamsmith.image_files import check_image

OPEN = "<image:"
PLACEHOLDER = re.compile(r"<image:([^<>]*)>", re.IGNORECASE)


def image_refs(prompt: str) -> list[str]:
    """The image paths of ``prompt``'s placeholders, in order (repeats kept); a one-line ``DreamsmithError`` for an
    ``<image:`` without its closing ``>`` or with no path."""
    for start in (match.start() for match in re.finditer(re.escape(OPEN), prompt, re.IGNORECASE)):
        if not PLACEHOLDER.match(prompt, start):
            raise DreamsmithError(f"the prompt's '<image:' at character {start + 1} has no closing '>'; write "
                                  "<image:PATH>, e.g. \"a <image:ref.png> made of gold\"")
    refs = [match.group(1).strip() for match in PLACEHOLDER.finditer(prompt)]
    if any(not ref for ref in refs):
        raise DreamsmithError("the prompt has an <image:> without a path; write <image:PATH>, e.g. <image:ref.png>")
    return refs


def has_images(prompt: str) -> bool:
    """Whether ``prompt`` holds an image placeholder (well formed or not)."""
    return OPEN in prompt.lower()


def check_prompt_images(prompt: str) -> dict[str, Path]:
    """``{ref: resolved path}`` of the prompt's images, each an existing, readable image of a usable size."""
    return {ref: check_image(ref, f"<image:{ref}>").resolve() for ref in dict.fromkeys(image_refs(prompt))}


def text_words(prompt: str) -> list[str]:
    """The prompt's words outside its image placeholders."""
    return PLACEHOLDER.sub(" ", prompt).split()


def substitute_images(prompt: str, words: Mapping[str, str]) -> str:
    """``prompt`` with each placeholder whose path is in ``words`` replaced by its words (the others kept)."""
    if not words or not has_images(prompt):
        return prompt
    return PLACEHOLDER.sub(lambda match: words.get(match.group(1).strip(), match.group(0)), prompt)
