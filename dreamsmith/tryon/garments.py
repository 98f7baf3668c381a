"""What ``dreamsmith tryon`` is given, checked without torch: garment images and the region each one covers.

A garment is an RGBA image whose alpha is the garment (a product photo cut out). Each garment goes to
one region of the mesh, in order: ``upper`` and ``lower`` are the halves of the mesh's bounding box by
height, ``full`` the whole mesh, anything else a region expression of :mod:`dreamsmith.regions`
(``y>0.1 & z>0``, ``box(...)``). On a mesh that carries a body-part labelling
(:mod:`dreamsmith.tryon.body_parts`) ``upper`` and ``lower`` are a top's and trousers' parts and
``part:NAME[+NAME...]`` names parts. Every refusal is one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.image_files import read_rgba
from dreamsmith.regions import HalfSpace, Region, parse_expression
from dreamsmith.tryon.body_parts import ATTRIBUTE, GARMENT_PARTS, BodyParts, PartRegion, parse_parts

NAMED_REGIONS = ("upper", "lower", "full")
PART_PREFIX = "part:"
MODEL_PATHS = {"idm-vton": "DIR", "ladi-vton": "DIR", "stableviton": "CKPT"}
"""Try-on models ``--model KIND:PATH`` runs, and what PATH is (a model folder; StableVITON's checkpoint file or a
folder holding it and its .yaml)."""
MODEL_KINDS = tuple(MODEL_PATHS)
TRYON_MODELS = ("decal", *(f"{kind}:{path}" for kind, path in MODEL_PATHS.items()))
"""Texture sources ``--model`` names: the embedded decal, or a model kind and its folder."""
MODEL_LICENCES = {"idm-vton": "CC BY-NC-SA 4.0", "stableviton": "CC BY-NC-SA 4.0", "ladi-vton": "CC BY-NC 4.0"}
"""The published try-on models' licences: all non-commercial, so none is shipped or downloaded."""
MIN_GARMENT_FRACTION = 0.001
"""A garment whose alpha covers less of its image than this is blank."""


@dataclass(frozen=True)
class Garment:
    """A garment image ``rgba [H, W, 4]`` float32 in [0, 1] (alpha = garment) read from ``path``."""

    path: Path
    rgba: np.ndarray


def read_garment(path: Path) -> Garment:
    """The RGBA image at ``path``; refused in one line: missing, unreadable, too small or large (the checks of
    every image a user gives, ``image_files``), without alpha, blank alpha."""
    rgba, has_alpha = read_rgba(path, "garment image")
    if not has_alpha:
        raise DreamsmithError(f"garment image {path} has no alpha channel; save it as an RGBA PNG whose alpha is the "
                              "garment (transparent around it)")
    if (rgba[..., 3] > 0.5).mean() < MIN_GARMENT_FRACTION:
        raise DreamsmithError(f"garment image {path} has a blank alpha channel (no garment pixel is opaque); its "
                              "alpha must cover the garment")
    return Garment(path, rgba)


def region_half_spaces(choice: str, bounds: np.ndarray) -> tuple[HalfSpace, ...]:
    """The half-spaces of ``choice`` (``upper``/``lower``/``full`` or an expression) on a mesh whose bounding
    box is ``bounds [2, 3]``."""
    low, high = bounds
    middle = float(low[1] + high[1]) / 2
    margin = 1e-3 + 1e-3 * float(np.abs(bounds).max())
    if choice == "upper":
        return (HalfSpace(1, True, middle),)
    if choice == "lower":
        return (HalfSpace(1, False, middle),)
    if choice == "full":
        return tuple(HalfSpace(axis, above, float(value)) for axis in range(3)
                     for above, value in ((True, low[axis] - margin), (False, high[axis] + margin)))
    return parse_expression(choice, f"--region {choice}")


def check_regions(choices: list[str], n_garments: int) -> list[str]:
    """One region per garment (default ``upper`` for a single garment), each parsed, none given twice."""
    choices = [choice.strip() for choice in choices] or (["upper"] if n_garments == 1 else [])
    if n_garments == 0:
        raise DreamsmithError("no garment image: pass at least one GARMENT.png")
    if len(choices) != n_garments:
        raise DreamsmithError(
            f"{n_garments} garments for {len(choices)} region(s): give one --region per garment, in order "
            f"(e.g. --region upper --region lower); two garments cannot share one region")
    for choice in choices:
        if choice.lower().startswith(PART_PREFIX):
            parse_parts(choice)
        elif choice.lower() not in NAMED_REGIONS:
            region_half_spaces(choice, np.zeros((2, 3)))
    seen = [choice.lower().replace(" ", "") for choice in choices]
    for index, choice in enumerate(seen):
        if choice in seen[:index]:
            raise DreamsmithError(f"two garments for one region ({choices[index]!r}): each garment needs its own "
                                  "--region")
    return [choice.lower() if choice.lower() in NAMED_REGIONS or choice.lower().startswith(PART_PREFIX) else choice
            for choice in choices]


def mesh_regions(choices: list[str], garments: list[Garment], vertices: np.ndarray, faces: np.ndarray,
                 body: BodyParts | None = None) -> list[Region | PartRegion]:
    """The regions of ``choices`` on this mesh, named after their garments; a region that holds no triangle (no
    face's centroid inside it) is refused. On a mesh with a body-part labelling ``body``, ``upper`` and ``lower``
    are its parts (:data:`~dreamsmith.tryon.body_parts.GARMENT_PARTS`) and ``part:NAMES`` may be used."""
    bounds = np.stack([vertices.min(0), vertices.max(0)])
    centroids = vertices[faces].mean(axis=1)
    regions: list[Region | PartRegion] = []
    for choice, garment in zip(choices, garments, strict=True):
        if choice.startswith(PART_PREFIX) and body is None:
            raise DreamsmithError(f"--region {choice} needs a mesh with a body-part labelling (a GLB whose vertices "
                                  f"carry {ATTRIBUTE}); this one has none: use upper, lower, full or an expression")
        if body is not None and (choice.startswith(PART_PREFIX) or choice in GARMENT_PARTS):
            parts = parse_parts(choice) if choice.startswith(PART_PREFIX) else GARMENT_PARTS[choice]
            region: Region | PartRegion = PartRegion(body, parts, garment.path.name, choice)
        else:
            region = Region(region_half_spaces(choice, bounds), garment.path.name, choice)
        if not region.contains(centroids).any():
            low, high = (np.round(corner, 3).tolist() for corner in bounds)
            raise DreamsmithError(f"--region {choice} covers no triangle of the mesh (its bounding box is {low} to "
                                  f"{high}); choose a region on the mesh")
        regions.append(region)
    return regions


def check_model(model: str) -> tuple[str, Path | None]:
    """``(kind, path)`` of ``--model``: ``decal`` (no path) or ``KIND:PATH`` with an existing folder (or, for
    StableVITON, file)."""
    if model == "decal":
        return "decal", None
    kind, colon, folder = model.partition(":")
    if kind in MODEL_KINDS and colon and folder:
        exists = Path(folder).exists() if MODEL_PATHS[kind] == "CKPT" else Path(folder).is_dir()
        if not exists:
            what = "checkpoint (or a folder holding it)" if MODEL_PATHS[kind] == "CKPT" else "model folder"
            raise DreamsmithError(f"--model {model}: {folder} does not exist or is not a folder; pass the {kind} "
                                  f"{what} (its weights are {MODEL_LICENCES[kind]}, non-commercial: fetch them "
                                  "yourself)")
        return kind, Path(folder)
    raise DreamsmithError(f"unknown try-on model {model!r}; expected one of {', '.join(TRYON_MODELS)}")
