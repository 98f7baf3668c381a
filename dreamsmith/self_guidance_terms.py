"""Self-guidance terms on a prompt word's cross-attention map: ``"cube:centroid=0.3,0.5"``.

Image coordinates are fractions of the view: x from the left edge (0) to the right (1), y from the top
(0) to the bottom (1), as the image is seen.

    term   := WORD ":" KIND "=" VALUE ["@" WEIGHT]
    centroid=X,Y                     the word's map has its centre of mass at (X, Y)
    size=S                           the thresholded map covers the fraction S of the view
    shape=box(X0,Y0,X1,Y1)           the thresholded map is this box ...
    shape=disk(X,Y,R)                ... or this disk (R: a fraction of the view's side)

WEIGHT (default 1) scales the term's energy. Parsing needs no torch: the command line checks the terms,
and that each word is a word of the prompt, before any model loads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from dreamsmith.errors import ConfigError

KINDS = ("centroid", "size", "shape")
EXAMPLE = '"cube:centroid=0.3,0.5", "cube:size=0.4@2" or "cube:shape=box(0.1,0.2,0.5,0.8)"'
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(r"^\s*([^\s:]+)\s*:\s*([a-z]+)\s*=\s*(.+?)\s*(?:@\s*(" + _NUMBER + r"))?\s*$")
_SHAPE = re.compile(r"^(box|disk)\(([^()]*)\)$")


@dataclass(frozen=True)
class SelfGuidanceTerm:
    """One energy: ``kind`` on the map of ``word`` towards ``target`` (centroid: (x, y); size: (s,);
    shape: ("box" as 1.0, x0, y0, x1, y1) or ("disk" as 2.0, x, y, r)), scaled by ``weight``."""

    word: str
    kind: str
    target: tuple[float, ...]
    weight: float = 1.0


def _numbers(text: str, count: int, spec: str) -> tuple[float, ...]:
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != count or not all(re.fullmatch(_NUMBER, part) for part in parts):
        raise ConfigError(f"--self-guidance {spec!r}: cannot read {text!r} as {count} numbers; e.g. {EXAMPLE}")
    values = tuple(float(part) for part in parts)
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"--self-guidance {spec!r}: image coordinates and sizes are fractions between 0 and 1")
    return values


def parse_self_guidance(spec: str) -> SelfGuidanceTerm:
    """One term of the grammar in the module doc; a one-line ConfigError for anything else."""
    match = _TERM.match(spec)
    if not match:
        raise ConfigError(f"--self-guidance {spec!r} is not WORD:KIND=VALUE[@WEIGHT]; e.g. {EXAMPLE}")
    word, kind, value, weight = match.groups()
    if kind not in KINDS:
        raise ConfigError(f"--self-guidance {spec!r}: unknown kind '{kind}'; choose one of {', '.join(KINDS)}")
    if kind == "centroid":
        target = _numbers(value, 2, spec)
    elif kind == "size":
        target = _numbers(value, 1, spec)
        if target[0] <= 0.0:
            raise ConfigError(f"--self-guidance {spec!r}: a size is a fraction of the view above 0")
    else:
        shape = _SHAPE.match(value)
        if not shape:
            raise ConfigError(f"--self-guidance {spec!r}: a shape is box(X0,Y0,X1,Y1) or disk(X,Y,R)")
        if shape.group(1) == "box":
            x0, y0, x1, y1 = _numbers(shape.group(2), 4, spec)
            if not (x0 < x1 and y0 < y1):
                raise ConfigError(f"--self-guidance {spec!r}: a box needs X0 < X1 and Y0 < Y1")
            target = (1.0, x0, y0, x1, y1)
        else:
            target = (2.0, *_numbers(shape.group(2), 3, spec))
    term_weight = float(weight) if weight is not None else 1.0
    if not math.isfinite(term_weight) or term_weight < 0:
        raise ConfigError(f"--self-guidance {spec!r}: the weight after @ must be a number >= 0")
    return SelfGuidanceTerm(word, kind, target, term_weight)


def check_self_guidance_words(prompt: str, terms: list[SelfGuidanceTerm]) -> None:
    """Every term's word is a word of ``prompt``; one line naming the first that is not."""
    words = prompt.split()
    for term in terms:
        if term.word not in words:
            raise ConfigError(f"--self-guidance '{term.word}' is not a word of the prompt '{prompt}'; "
                              f"choose one of {', '.join(words)}")
