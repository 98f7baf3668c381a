"""A body-part labelling carried by the mesh: garment regions and a DensePose-style pose image from it.

A GLB may carry, per vertex, the custom attribute ``_BODY_PART`` (glTF's application-specific attributes
start with ``_``; trimesh reads it into ``vertex_attributes``): DensePose's part index, 0 for none, 1-2 the
torso, 3-4 the hands, 5-6 the feet, 7-10 the upper legs, 11-14 the lower legs, 15-18 the upper arms, 19-22
the lower arms, 23-24 the head. A surface point takes the label of the labelled vertex nearest it, so a
region is the set of points whose nearest vertex carries one of its parts (exact at the vertices, split
half-way between them), whatever unwrapping or decimation did to the mesh afterwards.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamsmith.errors import DreamsmithError

ATTRIBUTE = "_BODY_PART"
PART_COUNT = 24
PARTS = {"torso": (1, 2), "hands": (3, 4), "feet": (5, 6), "upper-legs": (7, 8, 9, 10),
         "lower-legs": (11, 12, 13, 14), "upper-arms": (15, 16, 17, 18), "lower-arms": (19, 20, 21, 22),
         "head": (23, 24)}
"""DensePose's part indices by name (right and left, front and back together)."""
GARMENT_PARTS = {"upper": PARTS["torso"] + PARTS["upper-arms"] + PARTS["lower-arms"],
                 "lower": PARTS["upper-legs"] + PARTS["lower-legs"]}
"""What ``--region upper|lower`` covers on a labelled mesh (a top's and trousers' parts)."""
VIRIDIS = np.array([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551], [0.369, 0.789, 0.383],
                    [0.993, 0.906, 0.144]], dtype=np.float32)
"""Viridis at 0, 1/4, 1/2, 3/4 and 1 (linear in between): the colours DensePose's part-segmentation view
gives part indices scaled to [0, 1]."""


def parse_parts(spec: str) -> tuple[int, ...]:
    """The part indices of ``part:NAME[+NAME...]`` (names of :data:`PARTS` or indices 1-24); one line if not."""
    names = spec.partition(":")[2].replace(",", "+").split("+")
    indices: list[int] = []
    for name in (n.strip().lower() for n in names):
        if name in PARTS:
            indices += PARTS[name]
        elif name.isdigit() and 1 <= int(name) <= PART_COUNT:
            indices.append(int(name))
        else:
            raise DreamsmithError(f"--region {spec}: {name!r} is not a body part; use part:NAME[+NAME...] with "
                                  f"{', '.join(PARTS)} or DensePose indices 1-{PART_COUNT}")
    return tuple(sorted(set(indices)))


@dataclass(frozen=True, eq=False)
class BodyParts:
    """Labelled vertices ``[V, 3]`` and their part indices ``labels [V]`` (0: none)."""

    vertices: np.ndarray
    labels: np.ndarray

    @functools.cached_property
    def tree(self) -> Any:
        from scipy.spatial import cKDTree

        labelled = self.labels > 0
        return cKDTree(self.vertices[labelled]), self.labels[labelled]

    def label_of(self, points: Any) -> Any:
        """Part indices of ``points [..., 3]`` (numpy or torch, answered in kind)."""
        is_array = isinstance(points, np.ndarray)
        array = points if is_array else points.detach().cpu().numpy()
        tree, labels = self.tree
        _, nearest = tree.query(array.reshape(-1, 3).astype(np.float64))
        found = labels[nearest].reshape(array.shape[:-1])
        if is_array:
            return found
        import torch

        return torch.from_numpy(found).to(points.device)

    def pose_image(self, points: Any, opacity: Any) -> Any:
        """``[B, 3, H, W]``: each pixel's part index as DensePose's segmentation view colours it (viridis of
        index / 24), black off the asset; ``points [B, H, W, 3]``, ``opacity [B, H, W, 1]``."""
        scaled = self.label_of(points).float().cpu().numpy() / PART_COUNT * (len(VIRIDIS) - 1)
        low = np.clip(np.floor(scaled).astype(int), 0, len(VIRIDIS) - 2)
        colour = VIRIDIS[low] + (scaled - low)[..., None] * (VIRIDIS[low + 1] - VIRIDIS[low])
        import torch

        image = torch.from_numpy(colour).to(opacity) * (opacity > 0.5)
        return image.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class PartRegion:
    """A garment region on a labelled mesh: the points whose label is one of ``parts`` (as a ``Region``)."""

    body: BodyParts
    parts: tuple[int, ...]
    prompt: str
    expression: str

    def contains(self, points: Any) -> Any:
        labels = self.body.label_of(points)
        if isinstance(labels, np.ndarray):
            return np.isin(labels, self.parts)
        import torch

        return torch.isin(labels, torch.tensor(self.parts, device=labels.device))


def read_body_parts(path: Path) -> BodyParts | None:
    """The labelling ``path`` carries (its ``_BODY_PART`` vertex attribute), or None; refused in one line when it
    is not one whole part index per vertex or labels nothing."""
    import trimesh

    loaded = trimesh.load(path, force="mesh", process=False)
    values = getattr(loaded, "vertex_attributes", {}).get(ATTRIBUTE)
    if values is None:
        return None
    labels = np.asarray(values, dtype=np.float64).reshape(-1)
    whole = len(labels) == len(loaded.vertices) and (labels == np.round(labels)).all()
    if not whole or labels.min() < 0 or labels.max() > PART_COUNT:
        raise DreamsmithError(f"{path}'s {ATTRIBUTE} attribute is not one part index 0-{PART_COUNT} per vertex; "
                              "fix or remove it")
    if not labels.any():
        raise DreamsmithError(f"{path}'s {ATTRIBUTE} attribute labels no vertex (all 0); fix or remove it")
    return BodyParts(np.asarray(loaded.vertices, dtype=np.float64), labels.astype(np.int64))
