"""Textual Inversion (Gal et al. 2022): one new word whose embedding row is learned; the UNet is untouched.

A token is added to the prior's tokenizer as a single unsplittable word and gets a new row of the text
encoder's input embedding. Files use diffusers' ``learned_embeds.safetensors`` layout (``{token: [D]}``,
what ``load_textual_inversion`` reads and ``examples/textual_inversion`` writes). A token of n > 1 vectors
(``{token: [n, D]}``, what that script writes with ``--num_vectors n``) becomes n words ``token``,
``token_1``, ... ``token_{n-1}``, and a prompt's ``token`` is written as all of them before it is tokenized
(diffusers' ``maybe_convert_prompt``; ``DiffusionPrior.token_expansions``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dreamsmith.errors import ConfigError

EMBEDS_FILE = "learned_embeds.safetensors"


def input_embeddings(prior: Any) -> torch.nn.Embedding:
    """The text encoder's token-embedding table ``[V, D]``."""
    return prior.text_encoder.get_input_embeddings()


def token_id(prior: Any, word: str) -> int | None:
    """The vocabulary id of ``word`` as one token, or None when the tokenizer has no such single token."""
    return prior.tokenizer.get_vocab().get(word)


def single_token(prior: Any, word: str) -> int | None:
    """The id ``word`` is tokenized to when it is one known token of the vocabulary (BPE vocabularies
    spell whole words with an end-of-word mark), else None."""
    tokenizer = prior.tokenizer
    ids = tokenizer(word, add_special_tokens=False).input_ids
    unknown = getattr(tokenizer, "unk_token_id", None)
    return int(ids[0]) if len(ids) == 1 and ids[0] != unknown else None


def add_token(prior: Any, token: str, embedding: Tensor) -> int:
    """Add ``token`` to the prior's tokenizer with input embedding ``embedding [D]``; returns its id.

    Refused (one line) when the token is empty, has spaces, or is already a word of the vocabulary: its
    meaning would silently change every prompt that uses it."""
    if not token or token.split() != [token]:
        raise ConfigError(f"the token {token!r} must be one word without spaces, e.g. \"<sks>\"")
    if token_id(prior, token) is not None or single_token(prior, token) is not None:
        raise ConfigError(f"the token {token!r} is already in the model's vocabulary; choose a new word, "
                          "e.g. \"<sks>\" (with the angle brackets)")
    table = input_embeddings(prior)
    if embedding.shape != (table.embedding_dim,):
        raise ConfigError(f"the embedding of {token!r} has shape {list(embedding.shape)}, the model's text "
                          f"encoder needs [{table.embedding_dim}]; it belongs to another base model")
    prior.tokenizer.add_tokens([token])
    new_id = token_id(prior, token)
    prior.text_encoder.resize_token_embeddings(len(prior.tokenizer), mean_resizing=False)
    table = input_embeddings(prior)
    with torch.no_grad():
        table.weight[new_id] = embedding.to(table.weight)
    table.weight.requires_grad_(False)
    return int(new_id)


def word_embedding(prior: Any, word: str) -> Tensor:
    """The input embedding ``[D]`` of an existing one-token ``word`` (e.g. a class word to start from)."""
    index = single_token(prior, word)
    if index is None:
        raise ConfigError(f"{word!r} is not one word of the model's vocabulary; choose a --class-word it knows")
    return input_embeddings(prior).weight[index].detach().clone()


def token_embeddings(prior: Any, tokens: list[str]) -> dict[str, Tensor]:
    """``{token: [D]}`` fp32 copies of the tokens' current embeddings (what a file stores)."""
    weight = input_embeddings(prior).weight
    return {token: weight[token_id(prior, token)].detach().float().cpu().clone() for token in tokens}


def save_embeddings(path: Path, embeddings: dict[str, Tensor]) -> None:
    """Write ``{token: [D]}`` in diffusers' ``learned_embeds.safetensors`` layout."""
    from safetensors.torch import save_file

    save_file({token: value.contiguous() for token, value in embeddings.items()}, str(path))


def vector_tokens(token: str, count: int) -> list[str]:
    """The words of a token's ``count`` vectors, as diffusers names them: ``token``, ``token_1``, ..."""
    return [token] + [f"{token}_{index}" for index in range(1, count)]


def expand_tokens(prompt: str, expansions: dict[str, str]) -> str:
    """``prompt`` with each multi-vector token written as its words (diffusers' ``maybe_convert_prompt``: a plain
    text replacement)."""
    for token, words in expansions.items():
        prompt = prompt.replace(token, words)
    return prompt


def read_embeddings(path: Path) -> dict[str, Tensor]:
    """``{token: [n, D]}`` from a diffusers-layout file (a ``[D]`` value is one vector); one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise ConfigError(f"cannot read the embeddings {path}: {error}") from None
    if not tensors:
        raise ConfigError(f"{path} holds no token embeddings")
    embeddings = {}
    for token, value in tensors.items():
        if value.dim() == 1:
            value = value[None]
        if value.dim() != 2 or value.shape[0] == 0:
            raise ConfigError(f"{path}: the embedding of {token!r} has shape {list(value.shape)}; a token's "
                              "embedding is [D] or [n, D] (n vectors)")
        embeddings[token] = value
    return embeddings


def load_embeddings(prior: Any, path: Path) -> list[str]:
    """Add the tokens of a ``learned_embeds.safetensors`` file to the prior (a token of n vectors as its n words,
    see the module doc); returns the file's tokens. A word the prior already has with this very embedding (the
    same adapter loaded for a second stage) is kept as it is."""
    loaded = []
    for token, vectors in read_embeddings(path).items():
        words = vector_tokens(token, len(vectors))
        for word, value in zip(words, vectors, strict=True):
            index = token_id(prior, word)
            if index is not None:
                current = input_embeddings(prior).weight[index].detach().float().cpu()
                if current.shape != value.shape or not torch.equal(current, value.float()):
                    raise ConfigError(f"{path}: the token {word!r} is already a word of the model with another "
                                      "meaning; rename it in the file or load only one adapter that defines it")
            else:
                add_token(prior, word, value)
        if len(words) > 1:
            prior.token_expansions[token] = " ".join(words)
        loaded.append(token)
    return loaded


@contextlib.contextmanager
def pseudo_words(text_encoder: Any, input_ids: Tensor, marker_id: int, words: Tensor) -> Iterator[None]:
    """While active, the text encoder's token embedding gives ``words [B, W, D]`` at the first ``W`` marker
    tokens of each row of ``input_ids [B, L]`` (the row's other tokens as before); differentiable in ``words``
    (LaDI-VTON's garment words, and the multimodal-prompt aligner's training, :mod:`dreamsmith.guidance.aligner`)."""
    positions = input_ids == marker_id
    if (positions.sum(1) < words.shape[1]).any():
        raise ValueError(f"every prompt needs {words.shape[1]} marker tokens for its pseudo-words")
    first = positions & (positions.cumsum(1) <= words.shape[1])

    def replace(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        if output.shape[:2] != input_ids.shape:
            return output
        return output.masked_scatter(first.unsqueeze(-1).to(output.device), words.to(output))

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
