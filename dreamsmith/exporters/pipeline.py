"""The export pipeline: cleanup -> decimation -> UV unwrap -> texture bake -> normals split at the crease
angle -> placement -> writers, LODs, QA report and previews.

Everything is written into a hidden staging folder inside the output folder and renamed into place at
the end, so a failure (or Ctrl-C) never leaves a partial asset where the asset should be.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.bake import AlbedoFn, bake_base_color, vertex_color_albedo
from dreamsmith.exporters.cleanup import cleanup, orient_outward, repair, smooth_vertex_normals
from dreamsmith.exporters.decimate import MIN_TRIANGLES, check_budget, decimate
from dreamsmith.exporters.gltf import Material, write_glb, write_gltf
from dreamsmith.exporters.lod import lod_meshes, lod_texture_size, max_lod_levels
from dreamsmith.exporters.normals import crease_vertex_normals
from dreamsmith.exporters.obj import write_obj
from dreamsmith.exporters.options import ExportOptions
from dreamsmith.exporters.orient import footprint_yaw, yaw_matrix
from dreamsmith.exporters.qa import is_power_of_two, lod_levels_check, profile, qa_report
from dreamsmith.exporters.seen_colour import seen_albedo_fn
from dreamsmith.exporters.usdz import write_usdz
from dreamsmith.paths import safe_name
from dreamsmith.representations.mesh import Mesh

Writer = Callable[[Path, Mesh, dict, Material], list[Path]]

WRITERS: dict[str, tuple[str, Writer]] = {
    "glb": (".glb", write_glb),
    "gltf": (".gltf", write_gltf),
    "obj": (".obj", write_obj),
    "usdz": (".usdz", write_usdz),
}
"""Format name -> (file suffix, writer)."""

ORIGINS = ("center", "base")
SURFACE_COLOURS = ("seen", "surface")
TEXTURE_SIZE_RANGE = (64, 8192)
PREVIEW_RESOLUTION_RANGE = (32, 2048)
SCALE_RANGE_M = (1e-3, 1e4)
"""Sizes float32 positions hold with sub-millimetre detail: a millimetre to ten kilometres."""
MAX_LODS = 10
"""Levels of detail any mesh can use: 2^10 = 1024 times fewer triangles than the asset."""


@dataclass
class ExportResult:
    """What ``export_mesh`` wrote."""

    paths: list[Path]
    """Every file written, in the output folder."""
    qa: dict[str, Any]
    """The QA report (also written to qa.json)."""
    timings: dict[str, float]
    """Wall seconds per step: cleanup, decimate, unwrap, bake, normals, write, lods, qa, previews."""
    mesh: Mesh
    """The level-0 asset as written (placed, UV-textured)."""


def check_options(options: ExportOptions) -> None:
    """Refuse unusable options before any work, with one-line messages: every value that would fail
    or write a wrong asset (non-finite numbers, sizes out of range, more LODs than triangles allow)."""
    formats = options.formats
    if isinstance(formats, str):
        raise DreamsmithError(f"export formats {formats!r} must be a list of names, e.g. ['{formats}']")
    unknown = [f for f in formats if f not in WRITERS]
    if unknown or not formats:
        name = unknown[0] if unknown else ""
        raise DreamsmithError(f"unknown export format '{name}'; choose from {', '.join(WRITERS)}")
    low, high = TEXTURE_SIZE_RANGE
    _whole_number("--texture-size", options.texture_size)
    if not (is_power_of_two(options.texture_size) and low <= options.texture_size <= high):
        raise DreamsmithError(f"--texture-size {options.texture_size} is not a power of two between {low} and {high} "
                              "(e.g. 512, 1024, 2048, 4096)")
    if options.max_triangles is not None:
        _whole_number("--max-triangles", options.max_triangles)
        check_budget(options.max_triangles)
    _whole_number("--lods", options.lods)
    if options.lods < 0:
        raise DreamsmithError(f"--lods {options.lods} must be 0 or more")
    _check_lods(options.lods, options.max_triangles)
    if options.origin not in ORIGINS:
        raise DreamsmithError(f"--origin {options.origin} is unknown; choose center or base")
    if options.scale is not None:
        low, high = SCALE_RANGE_M
        if not (_is_number(options.scale) and low <= options.scale <= high):
            raise DreamsmithError(f"--scale {options.scale} must be a positive size in metres from {low:g} to {high:g}")
    _whole_number("--preview-size", options.preview_resolution)
    low, high = PREVIEW_RESOLUTION_RANGE
    if options.preview_resolution and not (low <= options.preview_resolution <= high
                                           and options.preview_resolution % 16 == 0):
        raise DreamsmithError(f"--preview-size {options.preview_resolution} must be 0 (no previews) or a multiple "
                              f"of 16 from {low} to {high} (video encoders need whole macro blocks)")
    profile(options.profile)
    safe_name(options.name, "export.name")  # the file stem of every file written: never a path
    _fraction("export.material.metallic", options.material.metallic)
    _fraction("export.material.roughness", options.material.roughness)
    _fraction("export.keep_components_fraction", options.keep_components_fraction)
    if options.surface_colour not in SURFACE_COLOURS:
        raise DreamsmithError(f"export.surface_colour {options.surface_colour!r} is unknown; choose seen or surface")
    if not (_is_number(options.crease_angle) and 0 <= options.crease_angle <= 180):
        raise DreamsmithError(f"export.crease_angle {options.crease_angle} must be an angle from 0 to 180 degrees")
    try:
        json.dumps(options.extras, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise DreamsmithError(f"export extras must be JSON values with finite numbers: {error}") from None
    _check_finite(options)


def _is_number(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole_number(label: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DreamsmithError(f"{label} {value} must be a whole number")


def _fraction(label: str, value: Any) -> None:
    if not (_is_number(value) and 0 <= value <= 1):
        raise DreamsmithError(f"{label} {value} must be a number from 0 to 1")


def _check_lods(lods: int, max_triangles: int | None) -> None:
    """More levels than halvings down to ``MIN_TRIANGLES`` would repeat the smallest level."""
    halving = f"each level halves the triangles, down to {MIN_TRIANGLES}"
    if max_triangles is not None and lods > max_lod_levels(max_triangles):
        raise DreamsmithError(f"--lods {lods} is more than --max-triangles {max_triangles} allows: at most "
                              f"{max_lod_levels(max_triangles)} ({halving})")
    if lods > MAX_LODS:
        raise DreamsmithError(f"--lods {lods} is more than any mesh can use: at most {MAX_LODS} ({halving})")


def _check_finite(options: Any, prefix: str = "export.") -> None:
    """Every number in ``options`` (nested dataclasses included) is finite."""
    for item in dataclasses.fields(options):
        value = getattr(options, item.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{item.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise DreamsmithError(f"{prefix}{item.name} is {value}; give a finite number")


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written in it, or fail with a clear message."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise DreamsmithError(f"cannot write to {folder}: {error.strerror or error}; choose another --out") from None


def placement(mesh: Mesh, origin: str, scale: float | None, align_yaw: bool = False,
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """``(turn [3, 3], anchor [3], factor)`` such that ``(v @ turn - anchor) * factor`` puts ``mesh``
    where asked (``turn``: the footprint squared to the axes when ``align_yaw``, else the identity)."""
    turn = yaw_matrix(footprint_yaw(mesh.vertices)) if align_yaw else np.eye(3)
    turned = mesh.vertices.astype(np.float64) @ turn
    low, high = turned.min(0), turned.max(0)
    anchor = (low + high) / 2
    if origin == "base":
        anchor[1] = low[1]
    factor = 1.0 if scale is None else scale / max(float((high - low).max()), 1e-12)
    return turn, anchor, factor


def place(mesh: Mesh, turn: np.ndarray, anchor: np.ndarray, factor: float) -> Mesh:
    """``mesh`` turned, moved and uniformly scaled (normals turned with it; the scale is uniform and
    positive, so they need nothing else)."""
    vertices = ((mesh.vertices.astype(np.float64) @ turn - anchor) * factor).astype(np.float32)
    normals = None if mesh.vertex_normals is None else (mesh.vertex_normals @ turn).astype(np.float32)
    return mesh.copy(vertices=vertices, vertex_normals=normals)


def seen_surface_albedo(geometry: Mesh, density: AlbedoFn, albedo: AlbedoFn) -> AlbedoFn:
    """The bake's albedo corrected to the colour the field shows at ``geometry`` (cleaned: outward, with
    normals): rays from 5 % of the asset's size outside to half its size inside, 32 samples."""
    size = float(np.ptp(geometry.vertices, axis=0).max())
    return seen_albedo_fn(geometry, density, albedo, outside=0.05 * size, inside=0.5 * size, samples=32)


def textured(geometry: Mesh, albedo: AlbedoFn, texture_size: int, crease_angle: float,
             timings: dict[str, float]) -> Mesh:
    """Unwrap, bake and split the normals at ``crease_angle`` degrees of one level (adds the time of
    each to ``timings``). The split copies UVs with positions, so it leaves the texture as baked."""
    from dreamsmith.exporters.uv import unwrap

    with _timed(timings, "unwrap"):
        mesh = unwrap(geometry, texture_size)
    with _timed(timings, "bake"):
        mesh = bake_base_color(mesh, albedo, texture_size)
    with _timed(timings, "normals"):
        return crease_vertex_normals(mesh, crease_angle)


def export_mesh(mesh: Mesh, albedo: AlbedoFn | None, out_dir: Path | str, options: ExportOptions | None = None,
                density: AlbedoFn | None = None) -> ExportResult:
    """Export ``mesh`` (world frame of the field ``albedo`` is defined in) into ``out_dir``.

    albedo: sRGB albedo of surface points (e.g. the run's ``NeRFField.albedo``); None bakes ``mesh``'s
    vertex colours. density: the volume density of the same field (``[N, 3] -> [N]``, per metre); with it
    and ``options.surface_colour == "seen"`` the bake reads the colour the field shows along the surface
    normal (:mod:`dreamsmith.exporters.seen_colour`). A mesh that already has UVs and a texture (a texture
    stage's) is written as it is: no cleanup, decimation, unwrap, placement, normal split or LODs, so its
    positions, indices and UVs come back exactly. Writes ``<name>.<format>`` per format (with sidecar
    .mtl/.bin/PNG files), ``<name>_lod<k>.<format>`` per LOD (as many as the triangles allow: the QA
    report says when fewer than asked), ``qa.json`` and the previews; returns the paths, QA and timings.
    """
    options = options or ExportOptions()
    check_options(options)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    if mesh.uvs is not None and mesh.base_color_texture is not None:
        return _export_fixed(mesh, out_dir, options)
    albedo = albedo or vertex_color_albedo(mesh)
    timings: dict[str, float] = {}

    # Winding and normals are made once, on the mesh that is written: a mesh to be decimated is only repaired
    # first (decimation keeps neither), and the seen colour is read at the written mesh's vertices.
    with _timed(timings, "cleanup"):
        geometry = repair(mesh, options.keep_components_fraction)
        decimating = options.max_triangles is not None and geometry.n_faces > options.max_triangles
        if not decimating:
            geometry = smooth_vertex_normals(orient_outward(geometry))
    if geometry.n_faces == 0:
        raise DreamsmithError("the mesh has no faces left after cleanup: nothing to export")
    if decimating:
        with _timed(timings, "decimate"):
            geometry = cleanup(decimate(geometry, options.max_triangles), options.keep_components_fraction)
    if density is not None and options.surface_colour == "seen":
        with _timed(timings, "seen_colour"):
            albedo = seen_surface_albedo(geometry, density, albedo)
    turn, anchor, factor = placement(geometry, options.origin, options.scale, options.align_yaw)
    levels = min(options.lods, max_lod_levels(geometry.n_faces))

    with _staging(out_dir) as staging:
        written: list[Path] = []
        asset = textured(geometry, albedo, options.texture_size, options.crease_angle, timings)
        asset = place(asset, turn, anchor, factor)
        with _timed(timings, "write"):
            written += _write_level(asset, staging / options.name, options)
        with _timed(timings, "qa"):
            lod_check = [lod_levels_check(options.lods, levels, geometry.n_faces)] if options.lods else []
            report = {"asset": qa_report(asset, options.profile, extra_checks=lod_check), "lods": []}
        with _timed(timings, "lods"):
            for level, lod_geometry in enumerate(lod_meshes(geometry, levels) if levels else [], start=1):
                size = lod_texture_size(options.texture_size, level)
                lod = place(textured(lod_geometry, albedo, size, options.crease_angle, {}), turn, anchor, factor)
                written += _write_level(lod, staging / f"{options.name}_lod{level}", options)
                lod_qa = qa_report(lod, options.profile, level)
                report["lods"].append({"level": level, "triangles": lod.n_faces, "texture_size": size,
                                       "status": lod_qa["status"], "checks": lod_qa["checks"]})
        final = _previews_qa_publish(asset, staging, out_dir, written, report, timings, options)
    return ExportResult(paths=final, qa=report, timings=timings, mesh=asset)


def _export_fixed(mesh: Mesh, out_dir: Path, options: ExportOptions) -> ExportResult:
    """Write a textured mesh unchanged, with its QA report and previews."""
    timings: dict[str, float] = {}
    with _staging(out_dir) as staging:
        with _timed(timings, "write"):
            written = _write_level(mesh, staging / options.name, options)
        with _timed(timings, "qa"):
            report = {"asset": qa_report(mesh, options.profile), "lods": []}
        final = _previews_qa_publish(mesh, staging, out_dir, written, report, timings, options)
    return ExportResult(paths=final, qa=report, timings=timings, mesh=mesh)


def _previews_qa_publish(mesh: Mesh, staging: Path, out_dir: Path, written: list[Path], report: dict,
                         timings: dict[str, float], options: ExportOptions) -> list[Path]:
    """Previews of ``mesh`` and qa.json beside the written files in ``staging``, then all published to
    ``out_dir``; returns the published paths."""
    if options.preview_resolution:
        from dreamsmith.exporters.previews import write_previews

        with _timed(timings, "previews"):
            written = [*written, *write_previews(mesh, staging, options.name, options.preview_resolution)]
    report["files"] = sorted({p.name for p in written} | {"qa.json"})
    report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    (staging / "qa.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return _publish(staging, out_dir, [*written, staging / "qa.json"])


def _write_level(mesh: Mesh, stem: Path, options: ExportOptions) -> list[Path]:
    paths: list[Path] = []
    for name in dict.fromkeys(options.formats):
        suffix, writer = WRITERS[name]
        paths += writer(stem.with_name(stem.name + suffix), mesh, options.extras, options.material)
    return paths


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - started


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A hidden folder inside ``out_dir`` (same file system: renames are atomic), removed at the end;
    a failed write (disk full, permissions) becomes a one-line error."""
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        yield staging
    except OSError as error:
        raise DreamsmithError(f"writing the export into {out_dir} failed: {error.strerror or error}; "
                              "nothing was changed there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, out_dir: Path, paths: list[Path]) -> list[Path]:
    """Rename the staged files into ``out_dir`` (sidecars first, the main files last); returns their paths."""
    unique = list(dict.fromkeys(paths))
    sidecar_suffixes = (".png", ".bin", ".mtl", ".gif", ".mp4", ".json")
    ordered = sorted(unique, key=lambda p: p.suffix not in sidecar_suffixes)
    final = []
    for path in ordered:
        target = out_dir / path.relative_to(staging)
        os.replace(path, target)
        final.append(target)
    return final
