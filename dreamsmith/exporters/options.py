"""What an export writes and how: plain dataclasses (no heavy imports), shared by the pipeline, the
engine's run config (``export.*`` keys) and ``dreamsmith export``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Material:
    """Metallic-roughness factors of the exported material (the base colour comes from the texture)."""

    metallic: float = 0.0
    """Metalness in [0, 1]; score-distilled albedo carries no metalness, so 0."""
    roughness: float = 0.9
    """Perceptual roughness in [0, 1]."""
    name: str = ""
    """Material name shown in DCC tools; empty: ``<asset>_material``, after the file stem."""


@dataclass
class ExportOptions:
    """What to write and how."""

    formats: tuple[str, ...] = ("glb",)
    """Any of glb, gltf, obj, usdz."""
    texture_size: int = 1024
    """Side of the square base-colour texture in texels (a power of two)."""
    max_triangles: int | None = None
    """Triangle budget of the asset (quadric decimation); None keeps every triangle."""
    lods: int = 0
    """Further levels of detail, each about half the triangles of the one before."""
    origin: str = "center"
    """center: the bounding box centred on the origin; base: resting on y = 0, centred in x and z."""
    align_yaw: bool = True
    """Turn the asset about +Y (at most 45°) so its footprint's smallest bounding rectangle lies along x
    and z: square to a level grid (a round footprint is left as it is)."""
    scale: float | None = None
    """Longest bounding-box side in metres; None keeps the field's metres."""
    profile: str = "pc"
    """QA budgets: mobile, pc or hero."""
    name: str = "asset"
    """File stem: <name>.glb, <name>_lod1.glb, ...; also names the object, mesh, material and texture inside."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Written into the files' metadata (the prompt, preset, seed)."""
    material: Material = field(default_factory=Material)
    """Metallic and roughness factors."""
    preview_resolution: int = 256
    """Turntable frame size in pixels (the poster is twice as large); 0 writes no previews."""
    keep_components_fraction: float = 0.05
    """Drop connected components with fewer faces than this fraction of the largest (floaters)."""
    crease_angle: float = 40.0
    """Edges whose faces' normals differ by more degrees than this are shaded hard (180: every edge smooth)."""
    surface_colour: str = "seen"
    """seen: the colour the field shows at the surface (its albedo composited along the inward normal, so a
    translucent field bakes the colour its renders had); surface: the albedo at the surface point only.
    The same for a mesh with no field behind it."""
