"""glTF 2.0 binary (GLB) writer: +Y up, metres, front +Z (glTF's own frame: no axis swap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from dreamsmith.representations.mesh import Mesh

GENERATOR = "dreamsmith"


def to_trimesh(mesh: Mesh) -> trimesh.Trimesh:
    """A trimesh of ``mesh`` with its vertex colours (sRGB, 8 bit)."""
    colors = None
    if mesh.vertex_colors is not None:
        rgb = np.round(np.clip(mesh.vertex_colors, 0.0, 1.0) * 255).astype(np.uint8)
        colors = np.concatenate([rgb, np.full((rgb.shape[0], 1), 255, np.uint8)], axis=1)
    return trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colors, process=False)


def glb_bytes(mesh: Mesh, extras: dict | None = None) -> bytes:
    """The GLB encoding of ``mesh``; ``extras`` (e.g. the prompt) go in the asset's extras."""
    scene = trimesh.Scene(to_trimesh(mesh))
    scene.metadata["extras"] = extras or {}
    return scene.export(file_type="glb")


def write_glb(path: Path, mesh: Mesh, extras: dict | None = None) -> None:
    """Write ``mesh`` to ``path`` (callers make the write atomic)."""
    Path(path).write_bytes(glb_bytes(mesh, extras))
