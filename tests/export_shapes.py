"""Analytic meshes and albedo functions for the export tests, and the Khronos glTF validator driver."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamsmith.exporters.isosurface import marching_cubes, sample_grid
from dreamsmith.representations.mesh import Mesh

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / "tools" / "gltf-validator"


def ball(radius: float = 0.35, resolution: int = 48) -> Mesh:
    """Marching cubes of a ball's density: a closed, outward-wound sphere of ``radius`` metres."""
    volume = sample_grid(lambda points: 20.0 * (radius - points.norm(dim=-1)), 0.5, resolution)
    return marching_cubes(volume, 0.0, 0.5)


def smooth_albedo(points: torch.Tensor) -> torch.Tensor:
    """A smooth, everywhere-different colour field ``[N, 3]`` in [0.1, 0.9]: seams and misplaced texels show."""
    x, y, z = points.unbind(-1)
    return 0.5 + 0.4 * torch.stack([torch.sin(4 * x + 1), torch.cos(3 * y), torch.sin(5 * z)], -1)


def unit_cube() -> Mesh:
    """The unit cube centred on the origin: 8 vertices, 12 outward triangles, area 6 m²."""
    vertices = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))]
    return Mesh(vertices, faces)


def validate_gltf(path: Path) -> dict:
    """The Khronos glTF validator's JSON report of ``path`` (skips the test only when node is missing)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the Khronos glTF validator (npm gltf-validator) cannot run")
    if not (VALIDATOR / "node_modules" / "gltf-validator").is_dir():
        pytest.fail(f"gltf-validator is not installed: run `npm ci --prefix {VALIDATOR.relative_to(ROOT)}`")
    result = subprocess.run(["node", str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
