"""Regions of an asset in world coordinates, for regional prompts: ``"y>0: a red roof"``.

A region is an intersection of axis-aligned half-spaces (world frame: +Y up, metres, DESIGN.md):

    region   := term ("&" term)*
    term     := AXIS ("<" | ">") NUMBER          e.g.  y>0   x<-0.1   z>0.25
              | "box(" x0 "," y0 "," z0 "," x1 "," y1 "," z1 ")"   the lower and the upper corner
    spec     := region ":" prompt                e.g.  "box(-0.2,0,-0.2,0.2,0.5,0.2) & x>0: a red door"

Parsing needs no torch (the command line checks regions before any model loads); the inside test
works on numpy arrays and torch tensors of points alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dreamsmith.errors import DreamsmithError

AXES = "xyz"
EXAMPLE = '"y>0: a red roof" or "box(-0.2,0,-0.2,0.2,0.5,0.2): a red door"'
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_HALF_SPACE = re.compile(rf"^([xyz])\s*([<>])\s*({_NUMBER})$")
_BOX = re.compile(rf"^box\(\s*({_NUMBER}(?:\s*,\s*{_NUMBER}){{5}})\s*\)$")


@dataclass(frozen=True)
class HalfSpace:
    """Points with coordinate ``axis`` (0: x, 1: y, 2: z) above ``offset`` (``above``) or below it."""

    axis: int
    above: bool
    offset: float

    def contains(self, points: Any) -> Any:
        """Inside-ness ``[...]`` (bool) of ``points [..., 3]`` (numpy or torch)."""
        coordinate = points[..., self.axis]
        return coordinate > self.offset if self.above else coordinate < self.offset


@dataclass(frozen=True)
class Region:
    """A regional prompt: the intersection of ``half_spaces`` and the ``prompt`` painted there."""

    half_spaces: tuple[HalfSpace, ...]
    prompt: str
    expression: str

    def contains(self, points: Any) -> Any:
        """Inside-ness ``[...]`` (bool) of ``points [..., 3]`` (numpy or torch)."""
        inside = self.half_spaces[0].contains(points)
        for half_space in self.half_spaces[1:]:
            inside = inside & half_space.contains(points)
        return inside


def parse_region(spec: str) -> Region:
    """The :class:`Region` of ``"EXPRESSION: PROMPT"``; a DreamsmithError in one line when it does not parse."""
    expression, colon, prompt = spec.partition(":")
    expression, prompt = expression.strip(), prompt.strip()
    if not colon or not expression or not prompt:
        raise DreamsmithError(f"region {spec!r} is not 'EXPRESSION: PROMPT', e.g. {EXAMPLE}")
    return Region(parse_expression(expression, spec), prompt, expression)


def parse_expression(expression: str, spec: str | None = None) -> tuple[HalfSpace, ...]:
    """The half-spaces of a region ``EXPRESSION`` (``y>0 & box(...)``); errors quote ``spec`` (default: it)."""
    half_spaces: list[HalfSpace] = []
    for term in expression.split("&"):
        half_spaces += _parse_term(term.strip().lower(), expression if spec is None else spec)
    return tuple(half_spaces)


def _parse_term(term: str, spec: str) -> list[HalfSpace]:
    match = _HALF_SPACE.match(term)
    if match:
        return [HalfSpace(AXES.index(match[1]), match[2] == ">", float(match[3]))]
    match = _BOX.match(term)
    if match:
        corners = [float(value) for value in match[1].split(",")]
        lower, upper = corners[:3], corners[3:]
        if any(low >= high for low, high in zip(lower, upper, strict=True)):
            raise DreamsmithError(f"region {spec!r}: a box is box(x0,y0,z0,x1,y1,z1) with each lower corner "
                                  "value below the upper one")
        return [HalfSpace(axis, above, value) for axis in range(3)
                for above, value in ((True, lower[axis]), (False, upper[axis]))]
    raise DreamsmithError(f"region {spec!r}: cannot read {term!r}; a region is AXIS>NUMBER, AXIS<NUMBER or "
                          f"box(x0,y0,z0,x1,y1,z1), joined by &, e.g. {EXAMPLE}")


SCENE_EXTENT = 0.5
"""The asset lies inside the cube [-0.5, 0.5]³ (the sphere of radius 0.5 of DESIGN.md, with its corners)."""
SUBJECT_EXAMPLE = '"box(-0.5,0,-0.5,0,0.5,0.5): dog.png" or "y>0.2: hat.png=a hat"'


@dataclass(frozen=True)
class Subject:
    """A subject image confined to a 3D box (MS-Diffusion's multi-subject layout, in 3D): ``lower`` and ``upper``
    corners in world coordinates, inside the scene; ``phrase`` the words naming it ('' : none)."""

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    image: str
    phrase: str
    expression: str


def region_box(half_spaces: tuple[HalfSpace, ...], spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The corners of the axis-aligned box a region's half-spaces cut out of the scene cube; a DreamsmithError in
    one line when that box is empty (the region lies outside the scene)."""
    lower, upper = [-SCENE_EXTENT] * 3, [SCENE_EXTENT] * 3
    for half_space in half_spaces:
        if half_space.above:
            lower[half_space.axis] = max(lower[half_space.axis], half_space.offset)
        else:
            upper[half_space.axis] = min(upper[half_space.axis], half_space.offset)
    if any(low >= high for low, high in zip(lower, upper, strict=True)):
        raise DreamsmithError(f"subject {spec!r}: its box lies outside the scene, the cube from "
                              f"{-SCENE_EXTENT} to {SCENE_EXTENT} on every axis")
    return tuple(lower), tuple(upper)


def parse_subject(spec: str) -> Subject:
    """The :class:`Subject` of ``"EXPRESSION: IMAGE[=PHRASE]"`` (the image is not read here); a DreamsmithError in
    one line when it does not parse."""
    expression, colon, rest = spec.partition(":")
    image, _, phrase = rest.partition("=")
    expression, image, phrase = expression.strip(), image.strip(), phrase.strip()
    if not colon or not expression or not image:
        raise DreamsmithError(f"subject {spec!r} is not 'EXPRESSION: IMAGE[=PHRASE]', e.g. {SUBJECT_EXAMPLE}")
    lower, upper = region_box(parse_expression(expression, spec), spec)
    return Subject(lower, upper, image, phrase, expression)
