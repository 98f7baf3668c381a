"""The toyworld's edit pairs: (render of caption A, instruction, render of caption B from the same camera).

The training data of the embedded editing model ``toyworld-ip2p`` (InstructPix2Pix, Brooks et al. 2023,
made for free by the toy world instead of by Prompt-to-Prompt): "make it {colour}" keeps the shape and
changes the colour, "turn it into a {shape}" keeps the colour and changes the shape. Identity pairs (the
instruction names what the object already is, the target is the source) are a small share: they teach
that the source's pixels are to be kept wherever the instruction asks for no change, which is what an
edit should do to everything it does not name.

Captions held out of the base model's training never appear as source or target, and the
``(source, instruction)`` combinations of ``HELD_OUT_EDITS`` never appear in training: the model card
measures on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamsmith.toyworld import world as tw
from dreamsmith.toyworld.data import render_caption, sample_toyworld_cameras

COLOUR_INSTRUCTION = "make it {}"
SHAPE_INSTRUCTION = "turn it into a {}"  # every toyworld shape begins with a consonant
EDIT_WORDS: tuple[str, ...] = ("make", "it", "turn", "into")
"""The instructions' words that are not caption words (the edit model's tokenizer adds them)."""
INSTRUCTIONS: tuple[str, ...] = (*(COLOUR_INSTRUCTION.format(c) for c in tw.COLOURS),
                                 *(SHAPE_INSTRUCTION.format(s) for s in tw.SHAPES))
KINDS = ("colour", "shape", "identity")

HELD_OUT_EDITS: tuple[tuple[str, str], ...] = (
    ("a blue sphere", "make it yellow"),
    ("a green cylinder", "make it red"),
    ("a gray torus", "make it orange"),
    ("a yellow capsule", "make it purple"),
    ("an orange sphere", "make it green"),
    ("a red cylinder", "turn it into a cube"),
    ("a blue cone", "turn it into a torus"),
    ("a yellow sphere", "turn it into a capsule"),
    ("a purple cube", "turn it into a sphere"),
    ("a gray capsule", "turn it into a cone"),
)
"""(source caption, instruction) pairs never trained on; their targets are training captions of the base."""


def apply_instruction(source: str, instruction: str) -> str:
    """The caption of ``source`` after ``instruction`` ("make it blue", "turn it into a sphere")."""
    colour, shape = tw.parse_caption(source)
    words = instruction.lower().split()
    if len(words) == 3 and words[:2] == ["make", "it"] and words[2] in tw.COLOURS:
        return tw.caption(words[2], shape)
    if len(words) == 5 and words[:3] == ["turn", "it", "into"] and words[3] in ("a", "an") and words[4] in tw.SHAPES:
        return tw.caption(colour, words[4])
    raise ValueError(f"{instruction!r} is not a toyworld instruction; expected 'make it <colour>' or "
                     f"'turn it into a <shape>', e.g. {INSTRUCTIONS[2]!r}")


def instruction_kind(source: str, instruction: str) -> str:
    """"identity" when the instruction changes nothing, else "colour" or "shape"."""
    if apply_instruction(source, instruction) == tw.caption(*tw.parse_caption(source)):
        return "identity"
    return "colour" if instruction.startswith("make") else "shape"


def training_edits() -> dict[str, list[tuple[str, str, str]]]:
    """All trainable ``(source, instruction, target)`` triples by kind: source and target among the base's
    training captions, the combination not in ``HELD_OUT_EDITS``."""
    held_out = set(HELD_OUT_EDITS)
    edits: dict[str, list[tuple[str, str, str]]] = {kind: [] for kind in KINDS}
    for source in tw.TRAIN_CAPTIONS:
        for instruction in INSTRUCTIONS:
            target = apply_instruction(source, instruction)
            if target in tw.TRAIN_CAPTIONS and (source, instruction) not in held_out:
                edits[instruction_kind(source, instruction)].append((source, instruction, target))
    return edits


@dataclass
class EditPairs:
    """source, target: ``[N, H, W, 3]`` uint8 renders from the same camera; c2w ``[N, 4, 4]`` float32;
    edit_index ``[N]`` int64 into ``edits`` (the ``(source, instruction, target)`` triples drawn from)."""

    source: Tensor
    target: Tensor
    c2w: Tensor
    edit_index: Tensor
    edits: tuple[tuple[str, str, str], ...]

    def __len__(self) -> int:
        return self.source.shape[0]

    def triples(self, index: Tensor) -> list[tuple[str, str, str]]:
        """The ``(source, instruction, target)`` of the pairs at ``index [K]``."""
        return [self.edits[i] for i in self.edit_index[index].tolist()]


def generate_edit_pairs(
    n: int, resolution: int = 32, seed: int = 0,
    elevation_range: tuple[float, float] = tw.ELEVATION_RANGE_DEG,
    kind_weights: tuple[float, float, float] = (0.45, 0.45, 0.10),
) -> EditPairs:
    """``n`` pairs: a kind drawn with ``kind_weights`` (colour, shape, identity), a triple of that kind
    uniformly, one random camera per pair rendering both its source and its target."""
    generator = torch.Generator().manual_seed(seed)
    by_kind = training_edits()
    edits = tuple(triple for kind in KINDS for triple in by_kind[kind])
    offsets = torch.tensor([0, len(by_kind["colour"]), len(by_kind["colour"]) + len(by_kind["shape"])])
    sizes = torch.tensor([len(by_kind[kind]) for kind in KINDS])
    kind = torch.multinomial(torch.tensor(kind_weights), n, replacement=True, generator=generator)
    edit_index = offsets[kind] + (torch.rand(n, generator=generator) * sizes[kind]).long().clamp(max=sizes[kind] - 1)
    cameras = sample_toyworld_cameras(n, resolution, generator, elevation_range)
    source = torch.empty(n, resolution, resolution, 3, dtype=torch.uint8)
    target = torch.empty_like(source)
    for images, column in ((source, 0), (target, 2)):
        captions = [edits[i][column] for i in edit_index.tolist()]
        for text in sorted(set(captions)):
            idx = torch.tensor([i for i, c in enumerate(captions) if c == text])
            images[idx] = (render_caption(text, cameras[idx]) * 255).round().clamp(0, 255).to(torch.uint8)
    return EditPairs(source, target, cameras.c2w.float(), edit_index, edits)
