"""Prompt-to-Prompt's token bookkeeping: which tokens of a prompt a word is, and how a source prompt's tokens
map onto an edited prompt's (Hertz et al. 2022, Sec. 3.2; the seq_aligner of their code, written anew).

Positions are those of the padded token sequence the text encoder reads (position 0 is the start token).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError
from dreamsmith.prompt_words import check_reweight


def word_spans(tokenizer: Any, prompt: str) -> list[tuple[int, int]]:
    """``[start, end)`` token positions of each space-separated word of ``prompt`` (after the start token)."""
    spans, start = [], 1
    for word in prompt.split():
        count = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append((start, start + count))
        start += count
    return spans


def token_ids(tokenizer: Any, prompt: str, length: int) -> list[int]:
    """The padded token ids of ``prompt`` as the encoder reads them (``length`` of them)."""
    return list(tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids)


def swap_mapper(tokenizer: Any, source: str, edited: str, length: int) -> tuple[Tensor, Tensor]:
    """(mapper ``[L, L]``, own ``[L]``) of a word swap: prompts with as many words, each source word's tokens
    spread evenly onto the tokens of the edited word in its place, the start token and the padding kept."""
    source_spans, edited_spans = word_spans(tokenizer, source), word_spans(tokenizer, edited)
    if len(source_spans) != len(edited_spans):
        raise ConfigError(
            f"a word swap needs prompts with as many words: '{source}' has {len(source_spans)}, "
            f"'{edited}' has {len(edited_spans)}"
        )
    mapper = torch.zeros(length, length)
    mapper[0, 0] = 1.0
    for (s0, s1), (e0, e1) in zip(source_spans, edited_spans, strict=True):
        if s1 > length or e1 > length:
            break  # beyond what the encoder reads
        if s1 - s0 == e1 - e0:
            mapper[torch.arange(s0, s1), torch.arange(e0, e1)] = 1.0
        else:
            mapper[s0:s1, e0:e1] = 1.0 / (e1 - e0)
    source_end = source_spans[-1][1] if source_spans else 1
    edited_end = edited_spans[-1][1] if edited_spans else 1
    for offset in range(length - max(source_end, edited_end)):  # end token and padding, in order
        mapper[source_end + offset, edited_end + offset] = 1.0
    return mapper, torch.zeros(length)


def refine_mapper(tokenizer: Any, source: str, edited: str, length: int) -> tuple[Tensor, Tensor]:
    """(mapper ``[L, L]``, own ``[L]``) of a refinement: tokens the edited prompt shares with the source (the
    longest matching blocks of the two sequences) take the source's maps, new tokens keep their own."""
    source_ids, edited_ids = token_ids(tokenizer, source, length), token_ids(tokenizer, edited, length)
    mapper, own = torch.zeros(length, length), torch.ones(length)
    for block in difflib.SequenceMatcher(None, source_ids, edited_ids, autojunk=False).get_matching_blocks():
        for offset in range(block.size):
            mapper[block.a + offset, block.b + offset] = 1.0
            own[block.b + offset] = 0.0
    return mapper, own


def edit_mapper(tokenizer: Any, source: str, edited: str, length: int) -> tuple[Tensor, Tensor]:
    """A word swap when the prompts have as many words, else a refinement."""
    if len(source.split()) == len(edited.split()):
        return swap_mapper(tokenizer, source, edited, length)
    return refine_mapper(tokenizer, source, edited, length)


def equalizer(tokenizer: Any, prompt: str, weights: dict[str, float], length: int) -> Tensor:
    """``[L]`` the weight of each token of ``prompt``: ``weights[word]`` on the tokens of every occurrence of
    that word, 1 elsewhere."""
    check_reweight(prompt, weights)
    scale = torch.ones(length)
    for word, (start, end) in zip(prompt.split(), word_spans(tokenizer, prompt), strict=True):
        if word in weights:
            scale[start : min(end, length)] = float(weights[word])
    return scale
