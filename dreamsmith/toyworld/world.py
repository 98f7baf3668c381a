"""The toyworld: ground truth of the embedded prior (TOYWORLD.md), the one source of its numbers.

Six shapes as exact signed distance functions (negative inside), eight colours, the captions
``"a {colour} {shape}"`` and the camera/shading constants its renders use. Frame: +Y up, metres,
centred at the origin.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]

SPHERE_RADIUS = 0.45
CUBE_EDGE = 0.6
CYLINDER_RADIUS, CYLINDER_HEIGHT = 0.3, 0.7
CONE_BASE_RADIUS, CONE_HEIGHT = 0.35, 0.7
TORUS_MAJOR_RADIUS, TORUS_MINOR_RADIUS = 0.32, 0.12
CAPSULE_RADIUS, CAPSULE_HEIGHT = 0.22, 0.8

BOUNDING_RADIUS = 0.55
"""Radius of a sphere around the origin that holds every shape (the cube's corners reach 0.52)."""

CAMERA_DISTANCE = 2.0
FOVY_DEG = 40.0
ELEVATION_RANGE_DEG = (-10.0, 50.0)
AZIMUTH_RANGE_DEG = (0.0, 360.0)
AMBIENT = 0.4
DIFFUSE = 0.6
BACKGROUND = (1.0, 1.0, 1.0)
SCORE_ELEVATION_DEG = 20.0
SCORE_N_VIEWS = 8
SCORE_TOP_ELEVATION_DEG = 70.0
"""Elevation of the score's views from above, where a filled torus hole or a cone's disc shows."""
SCORE_TOP_N_VIEWS = 4
SCORE_VOLUME_BOUND = 0.75
"""Half-width of the score's occupancy grid: the toy NeRF's bound, so no part of an asset is cut off."""
SCORE_VOLUME_RESOLUTION = 96


def _length_xz(points: Tensor) -> Tensor:
    return torch.linalg.vector_norm(points[:, [0, 2]], dim=-1)


def sdf_sphere(points: Tensor) -> Tensor:
    """Sphere of radius 0.45. points: ``[N, 3]`` -> sdf ``[N]``."""
    return torch.linalg.vector_norm(points, dim=-1) - SPHERE_RADIUS


def sdf_cube(points: Tensor) -> Tensor:
    """Axis-aligned cube of edge 0.6. points: ``[N, 3]`` -> sdf ``[N]``."""
    q = points.abs() - CUBE_EDGE / 2
    outside = torch.linalg.vector_norm(q.clamp(min=0.0), dim=-1)
    inside = q.amax(dim=-1).clamp(max=0.0)
    return outside + inside


def sdf_cylinder(points: Tensor) -> Tensor:
    """Capped cylinder, radius 0.3, height 0.7, axis Y. points: ``[N, 3]`` -> sdf ``[N]``."""
    d = torch.stack([_length_xz(points) - CYLINDER_RADIUS, points[:, 1].abs() - CYLINDER_HEIGHT / 2], dim=-1)
    return d.amax(dim=-1).clamp(max=0.0) + torch.linalg.vector_norm(d.clamp(min=0.0), dim=-1)


def sdf_cone(points: Tensor) -> Tensor:
    """Cone, base radius 0.35 at y = -0.35, apex at y = +0.35. points: ``[N, 3]`` -> sdf ``[N]``.

    Inigo Quilez's exact capped cone with top radius 0 (``sdCappedCone``), in the (r, y) half-plane.
    """
    half = CONE_HEIGHT / 2
    r, y = _length_xz(points), points[:, 1]
    # distance to the base disk's rim region (cap) and to the slanted side segment
    cap_r = r - torch.minimum(r, torch.where(y < 0, torch.full_like(r, CONE_BASE_RADIUS), torch.zeros_like(r)))
    cap = torch.stack([cap_r, y.abs() - half], dim=-1)
    k1 = torch.tensor([0.0, half], dtype=points.dtype, device=points.device)
    k2 = torch.tensor([-CONE_BASE_RADIUS, 2 * half], dtype=points.dtype, device=points.device)
    q = torch.stack([r, y], dim=-1)
    along = (((k1 - q) * k2).sum(-1) / (k2 * k2).sum()).clamp(0.0, 1.0)
    side = q - k1 + k2 * along[:, None]
    inside = (side[:, 0] < 0) & (cap[:, 1] < 0)
    dist = torch.minimum((cap * cap).sum(-1), (side * side).sum(-1)).sqrt()
    return torch.where(inside, -dist, dist)


def sdf_torus(points: Tensor) -> Tensor:
    """Torus, major radius 0.32, minor 0.12, ring in the XZ plane. points: ``[N, 3]`` -> sdf ``[N]``."""
    q = torch.stack([_length_xz(points) - TORUS_MAJOR_RADIUS, points[:, 1]], dim=-1)
    return torch.linalg.vector_norm(q, dim=-1) - TORUS_MINOR_RADIUS


def sdf_capsule(points: Tensor) -> Tensor:
    """Capsule, radius 0.22, total height 0.8, axis Y. points: ``[N, 3]`` -> sdf ``[N]``."""
    half_segment = CAPSULE_HEIGHT / 2 - CAPSULE_RADIUS
    nearest = torch.zeros_like(points)
    nearest[:, 1] = points[:, 1].clamp(-half_segment, half_segment)
    return torch.linalg.vector_norm(points - nearest, dim=-1) - CAPSULE_RADIUS


SHAPE_EXTENTS: dict[str, tuple[float, float, float]] = {
    "sphere": (2 * SPHERE_RADIUS,) * 3,
    "cube": (CUBE_EDGE,) * 3,
    "cylinder": (2 * CYLINDER_RADIUS, CYLINDER_HEIGHT, 2 * CYLINDER_RADIUS),
    "cone": (2 * CONE_BASE_RADIUS, CONE_HEIGHT, 2 * CONE_BASE_RADIUS),
    "torus": (2 * (TORUS_MAJOR_RADIUS + TORUS_MINOR_RADIUS), 2 * TORUS_MINOR_RADIUS,
              2 * (TORUS_MAJOR_RADIUS + TORUS_MINOR_RADIUS)),
    "capsule": (2 * CAPSULE_RADIUS, CAPSULE_HEIGHT, 2 * CAPSULE_RADIUS),
}
"""Axis-aligned bounding-box size (x, y, z) in metres of each shape, all centred at the origin."""

SHAPES: dict[str, SdfFn] = {
    "sphere": sdf_sphere,
    "cube": sdf_cube,
    "cylinder": sdf_cylinder,
    "cone": sdf_cone,
    "torus": sdf_torus,
    "capsule": sdf_capsule,
}

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.10, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.55, 0.20, 0.75),
    "white": (0.92, 0.92, 0.92),
    "gray": (0.50, 0.50, 0.50),
}


def article(word: str) -> str:
    """``"an"`` before a vowel sound, else ``"a"`` (all toyworld words are spelt as they sound)."""
    return "an" if word[0] in "aeiou" else "a"


def caption(colour: str, shape: str) -> str:
    """The caption of one object, e.g. ``caption("orange", "cube") == "an orange cube"``."""
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown toyworld object {colour!r} {shape!r}; colours: {list(COLOURS)}, "
                         f"shapes: {list(SHAPES)}")
    return f"{article(colour)} {colour} {shape}"


ALL_CAPTIONS: tuple[str, ...] = tuple(caption(c, s) for c in COLOURS for s in SHAPES)
HELD_OUT_CAPTIONS: tuple[str, ...] = ("a purple torus", "an orange cone", "a white capsule", "a green cube")
TRAIN_CAPTIONS: tuple[str, ...] = tuple(c for c in ALL_CAPTIONS if c not in HELD_OUT_CAPTIONS)


def parse_caption(text: str) -> tuple[str, str]:
    """``(colour, shape)`` of a caption ``"a|an {colour} {shape}"`` (either article, any case/spacing)."""
    words = text.lower().split()
    if len(words) != 3 or words[0] not in ("a", "an") or words[1] not in COLOURS or words[2] not in SHAPES:
        raise ValueError(
            f"{text!r} is not a toyworld caption; expected 'a <colour> <shape>' with colour in "
            f"{list(COLOURS)} and shape in {list(SHAPES)}, e.g. 'a red cube'"
        )
    return words[1], words[2]


def albedo(colour: str) -> Tensor:
    """sRGB albedo ``[3]`` of a colour name."""
    return torch.tensor(COLOURS[colour], dtype=torch.float32)


def caption_sdf(text: str) -> tuple[SdfFn, Tensor]:
    """The ground truth of a caption: its shape's SDF and its albedo ``[3]``."""
    colour, shape = parse_caption(text)
    return SHAPES[shape], albedo(colour)
