"""Multimodal prompts (KOSMOS-G, Pan et al. 2023): ``"a <image:REF.png> made of gold"``.

Each image of the prompt is encoded by the aligner's image encoder and mapped by the aligner
(:mod:`dreamsmith.guidance.aligner`) to K word embeddings of the prior's text encoder. They enter the prompt the
way Textual Inversion's words do (:func:`~dreamsmith.guidance.textual_inversion.add_token`): K new tokens whose
input-embedding rows are the aligned words, and the prior writes each placeholder as its tokens before the
tokenizer runs (``DiffusionPrior.prompt_images``). The text encoder, the UNet and every guidance run unchanged;
a prompt without images encodes exactly as before, and an aligner that returns the word embeddings of "red
cube" makes "a <image:...>" encode exactly as "a red cube" (TWO_D.md's invariant).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.textual_inversion import add_token, input_embeddings, token_id

IMAGE_ENCODER_FOLDER = "image_encoder"
"""The aligner's image encoder: the folder beside the aligner's (as toyworld-ip ships them)."""


def image_tokens(words: Tensor) -> list[str]:
    """The K token names of an image's aligned words ``[K, D]``: named by their values, so the same image on the
    same prior reuses its tokens and another image never takes them."""
    digest = hashlib.sha1(words.detach().float().cpu().numpy().tobytes()).hexdigest()[:12]
    return [f"<image-{digest}-{k}>" for k in range(words.shape[0])]


def add_image_words(prior: Any, ref: str, words: Tensor) -> list[str]:
    """Make the placeholder ``<image:ref>`` of the prior's prompts stand for ``words [K, D]``; returns its tokens."""
    tokens = image_tokens(words)
    for token, word in zip(tokens, words, strict=True):
        if token_id(prior, token) is None:
            add_token(prior, token, word)
    prior.prompt_images[ref] = " ".join(tokens)
    return tokens


@torch.no_grad()
def aligned_words(aligner: Any, encoder: Any, rgb: Tensor) -> Tensor:
    """``[B, K, D]`` word embeddings of images ``rgb [B, H, W, 3]`` in [0, 1]."""
    return aligner(encoder.encode(rgb)).float()


def check_aligner_fits(aligner: Any, encoder: Any, prior: Any, folder: Path) -> None:
    """The aligner reads the encoder's embedding and writes the prior's word width; else one line."""
    width = input_embeddings(prior).embedding_dim
    if aligner.config["width"] != width:
        raise ConfigError(f"the aligner {folder} writes {aligner.config['width']}-wide words, the model's text "
                          f"encoder reads {width}: it belongs to another base model")
    if aligner.config["image_dim"] != encoder.embed_dim:
        raise ConfigError(f"the aligner {folder} reads {aligner.config['image_dim']}-wide image embeddings, its "
                          f"image encoder gives {encoder.embed_dim}")


def load_prompt_images(prior: Any, aligner_folder: str | Path, refs: list[str], images: list[str]) -> None:
    """Encode and align the prompt's images (``refs[i]`` as written in the prompt, ``images[i]`` its file) and put
    their words on ``prior``."""
    from dreamsmith.guidance.aligner import load_aligner
    from dreamsmith.guidance.image_encoders import load_image_encoder
    from dreamsmith.image_files import read_image

    folder = Path(aligner_folder)
    aligner = load_aligner(folder, prior.device)
    encoder = load_image_encoder(folder.parent / IMAGE_ENCODER_FOLDER, prior.device)
    check_aligner_fits(aligner, encoder, prior, folder)
    for ref, path in zip(refs, images, strict=True):
        rgb = torch.as_tensor(read_image(path, f"<image:{ref}>"))[None].to(prior.device)
        add_image_words(prior, ref, aligned_words(aligner, encoder, rgb)[0])
