"""Asset QA: the numbers an artist checks before an asset goes into a game, and pass/warn/fail per
check against the budgets of a target profile.

Topology is measured on welded positions: vertices split at UV seams (same position, different UVs)
count as one, so a closed surface cut into UV charts is still watertight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.bake import uv_coverage
from dreamsmith.exporters.cleanup import connected_component_labels, degenerate_face_mask, face_areas, weld_index
from dreamsmith.exporters.lod import max_lod_levels
from dreamsmith.representations.mesh import Mesh

PASS, WARN, FAIL = "pass", "warn", "fail"
_SEVERITY = {PASS: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Profile:
    """Budgets of one target platform."""

    max_triangles: int
    """Triangles of the asset (warn up to 1.25x, fail beyond)."""
    max_vertices: int
    """Vertices after UV-seam and hard-edge splits (warn beyond)."""
    max_texture_size: int
    """Largest texture side in texels (warn beyond)."""
    min_texel_density: float
    """Texels per metre on the surface (warn below)."""
    max_components: int
    """Connected pieces (warn beyond: floaters)."""


PROFILES: dict[str, Profile] = {
    "mobile": Profile(max_triangles=10_000, max_vertices=65_535, max_texture_size=1024, min_texel_density=128.0,
                      max_components=4),
    "pc": Profile(max_triangles=100_000, max_vertices=500_000, max_texture_size=2048, min_texel_density=256.0,
                  max_components=16),
    "hero": Profile(max_triangles=500_000, max_vertices=2_000_000, max_texture_size=4096, min_texel_density=512.0,
                    max_components=64),
}

MAX_UV_OVERLAP = (0.01, 0.05)
"""Overlapping texel fraction: pass up to the first, warn up to the second, fail beyond."""
SIZE_RANGE_M = (0.01, 100.0)
"""Largest bounding-box side in metres outside this range: warn (a unit mistake)."""


def profile(name: str) -> Profile:
    if name not in PROFILES:
        raise DreamsmithError(f"unknown QA profile '{name}'; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def edge_use_counts(faces: np.ndarray) -> np.ndarray:
    """How many faces use each distinct undirected edge ``[E]``."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


def mesh_metrics(mesh: Mesh, overlap_resolution: int = 1024) -> dict[str, Any]:
    """The QA numbers of ``mesh`` (plain JSON types)."""
    weld = weld_index(mesh.vertices)
    welded_faces = weld[mesh.faces]
    uses = edge_use_counts(welded_faces) if mesh.n_faces else np.zeros(0, np.int64)
    low, high = mesh.bounds() if mesh.n_vertices else np.zeros((2, 3))
    metrics: dict[str, Any] = {
        "triangles": mesh.n_faces,
        "vertices": mesh.n_vertices,
        "watertight": bool(mesh.n_faces > 0 and (uses == 2).all()),
        "boundary_edges": int((uses == 1).sum()),
        "non_manifold_edges": int((uses > 2).sum()),
        "degenerate_faces": int(degenerate_face_mask(mesh.vertices, mesh.faces).sum()),
        "connected_components": int(connected_component_labels(mesh.faces, weld).max() + 1) if mesh.n_faces else 0,
        "bounding_box_m": {"min": low.tolist(), "max": high.tolist(), "size": (high - low).tolist()},
        "surface_area_m2": float(face_areas(mesh.vertices, mesh.faces).sum()),
        "uvs": mesh.uvs is not None,
    }
    texture = mesh.base_color_texture
    metrics["texture_sizes"] = [] if texture is None else [[int(texture.shape[1]), int(texture.shape[0])]]
    if mesh.uvs is not None:
        metrics["uvs_inside_unit_square"] = bool(((mesh.uvs >= 0) & (mesh.uvs <= 1)).all())
        size = min(overlap_resolution, texture.shape[0] if texture is not None else overlap_resolution)
        coverage = uv_coverage(mesh.uvs, mesh.faces, size)
        covered = int((coverage >= 1).sum())
        metrics["uv_overlap_fraction"] = float((coverage >= 2).sum() / max(covered, 1))
        uv_area = face_areas(np.concatenate([mesh.uvs, np.zeros((mesh.n_vertices, 1))], axis=1), mesh.faces).sum()
        texels = texture.shape[0] * texture.shape[1] if texture is not None else 0
        metrics["texel_density_per_m"] = float(np.sqrt(uv_area * texels / max(metrics["surface_area_m2"], 1e-12)))
    return metrics


def _check(name: str, value: Any, status: str, limit: str) -> dict[str, Any]:
    return {"check": name, "value": value, "status": status, "limit": limit}


def evaluate(metrics: dict[str, Any], budgets: Profile) -> list[dict[str, Any]]:
    """Pass/warn/fail of each check of ``metrics`` against ``budgets``."""
    triangles = metrics["triangles"]
    checks = [
        _check("triangles", triangles, PASS if triangles <= budgets.max_triangles
               else WARN if triangles <= 1.25 * budgets.max_triangles else FAIL, f"<= {budgets.max_triangles}"),
        _check("vertices", metrics["vertices"], PASS if metrics["vertices"] <= budgets.max_vertices else WARN,
               f"<= {budgets.max_vertices}"),
        _check("watertight", metrics["watertight"], PASS if metrics["watertight"] else WARN, "closed surface"),
        _check("non-manifold edges", metrics["non_manifold_edges"], PASS if metrics["non_manifold_edges"] == 0
               else WARN, "0"),
        _check("degenerate faces", metrics["degenerate_faces"], PASS if metrics["degenerate_faces"] == 0 else FAIL,
               "0"),
        _check("connected components", metrics["connected_components"],
               PASS if 1 <= metrics["connected_components"] <= budgets.max_components else WARN,
               f"1..{budgets.max_components}"),
    ]
    largest = max(metrics["bounding_box_m"]["size"])
    checks.append(_check("size (m)", round(largest, 4), PASS if SIZE_RANGE_M[0] <= largest <= SIZE_RANGE_M[1]
                         else WARN, f"{SIZE_RANGE_M[0]}..{SIZE_RANGE_M[1]}"))
    if not metrics["uvs"]:
        checks.append(_check("UVs", False, FAIL, "present"))
    else:
        checks.append(_check("UVs inside [0, 1]", metrics["uvs_inside_unit_square"],
                             PASS if metrics["uvs_inside_unit_square"] else FAIL, "all"))
        overlap = metrics["uv_overlap_fraction"]
        checks.append(_check("UV overlap", round(overlap, 5), PASS if overlap <= MAX_UV_OVERLAP[0]
                             else WARN if overlap <= MAX_UV_OVERLAP[1] else FAIL, f"<= {MAX_UV_OVERLAP[0]}"))
        density = metrics["texel_density_per_m"]
        checks.append(_check("texel density (1/m)", round(density, 1),
                             PASS if density >= budgets.min_texel_density else WARN,
                             f">= {budgets.min_texel_density:g}"))
    sizes = metrics["texture_sizes"]
    if not sizes:
        checks.append(_check("base colour texture", None, FAIL, "present"))
    else:
        powers_of_two = all(is_power_of_two(w) and is_power_of_two(h) for w, h in sizes)
        largest_texture = max(max(w, h) for w, h in sizes)
        checks.append(_check("texture sizes", sizes, FAIL if not powers_of_two
                             else PASS if largest_texture <= budgets.max_texture_size else WARN,
                             f"powers of two, <= {budgets.max_texture_size}"))
    return checks


def lod_levels_check(requested: int, written: int, triangles: int) -> dict[str, Any]:
    """Whether every level of detail asked for was written: an asset of ``triangles`` allows only
    ``lod.max_lod_levels`` levels (warn when fewer than asked)."""
    return _check("LOD levels", written, PASS if written >= requested else WARN,
                  f"{requested} asked; {triangles} triangles allow {max_lod_levels(triangles)}")


def qa_report(mesh: Mesh, profile_name: str = "pc", level: int = 0,
              extra_checks: list[dict[str, Any]] | tuple[()] = ()) -> dict[str, Any]:
    """``{"profile", "budgets", "status", "metrics", "checks"}``; status is the worst check's.

    level: the LOD level; level k is seen from further away, so its minimum texel density is 2^-k
    of the profile's. extra_checks: checks of the export as a whole (e.g. ``lod_levels_check``)."""
    budgets = replace(profile(profile_name), min_texel_density=profile(profile_name).min_texel_density / 2**level)
    metrics = mesh_metrics(mesh)
    checks = evaluate(metrics, budgets) + list(extra_checks)
    status = max((c["status"] for c in checks), key=_SEVERITY.__getitem__)
    return {"profile": profile_name, "budgets": asdict(budgets), "status": status, "metrics": metrics, "checks": checks}

