"""``dreamsmith tryon``: dress a mesh in garment images through a texture source, into a run directory.

The mesh becomes a texture stage's representation whose texels start from the file's own colours. Views
of it (:func:`~dreamsmith.tryon.source.view_cameras`) go to the texture source; its answer is projected
into the texture (:mod:`dreamsmith.tryon.projection`). The texels some view saw, and every texel outside
the garments' regions, are then frozen, and the stage's guidance fills the rest (region texels no view
saw) in a short pass. The run directory is ``generate``'s (resume, previews, QA, export), with
``edit.json`` naming the mesh and garments, ``tryon.json`` the projection's counts and
``previews/tryon_views.png`` the source's views (renders above, its answer below).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dreamsmith.engine.config import RunConfig
from dreamsmith.engine.device import resolve_device
from dreamsmith.engine.edit_source import EditSource
from dreamsmith.engine.mesh_input import read_user_mesh
from dreamsmith.engine.previews import image_grid, write_png
from dreamsmith.engine.run import Progress, generate
from dreamsmith.engine.run_dir import RunDir, write_json
from dreamsmith.engine.stages import TextureRepresentation
from dreamsmith.exporters.bake import fill_gutters
from dreamsmith.tryon.body_parts import read_body_parts
from dreamsmith.tryon.garments import Garment, check_model, mesh_regions
from dreamsmith.tryon.projection import Projection, project
from dreamsmith.tryon.source import SourceResult, TextureSource, ViewBatch, render_views, view_cameras

VIEW_RESOLUTION = 384
SEAM_BAND = 1
"""Texels on either side of a view seam that the fill pass repaints with the unseen ones (0: unseen only)."""
"""Pixels along each side of the views the source edits (finer than the texels, so little is blurred)."""


@dataclass
class TryonSource(EditSource):
    """The dressed texture (``representation``, its seen texels frozen), its record, and what was projected."""

    views: ViewBatch | None = None
    result: SourceResult | None = None
    counts: dict[str, Any] = field(default_factory=dict)


def make_source(model: str, garments: list[Garment], regions: list[Any], vertices: np.ndarray,
                device: torch.device, seed: int, steps: int, allow_pickle: bool) -> TextureSource:
    """The texture source ``--model`` names, for these garments on these regions."""
    from dreamsmith.tryon.decal import DecalSource, decal_layers

    kind, folder = check_model(model)
    decal = DecalSource(decal_layers(garments, regions, vertices))
    if kind == "idm-vton":
        from dreamsmith.tryon.idm_vton import IDMVTON, IDMVTONSource

        return IDMVTONSource(IDMVTON.load(folder, device, allow_pickle), garments, steps=steps, seed=seed)
    if kind == "ladi-vton":
        from dreamsmith.tryon.ladi_vton import LaDIVTON, LaDIVTONSource

        return LaDIVTONSource(LaDIVTON.load(folder, device, allow_pickle), garments, decal, steps=steps, seed=seed)
    if kind == "stableviton":
        from dreamsmith.tryon.stableviton_source import StableVITONModel, StableVITONSource

        return StableVITONSource(StableVITONModel.load(folder, device, allow_pickle), garments, steps=steps, seed=seed)
    return decal


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@torch.no_grad()
def dress(mesh_path: Path, garments: list[Garment], choices: list[str], model: str, config: RunConfig,
          device: torch.device, notes: list[str], source_steps: int = 30) -> TryonSource:
    """The mesh with the garments projected into its texture and the fill-pass mask frozen (see the module)."""
    stage = config.stages[0]
    user = read_user_mesh(mesh_path, stage.uv_texture.max_faces)
    representation = TextureRepresentation(stage, device)
    mesh = user.mesh
    if mesh.uvs is None:
        notes.append(f"{mesh_path} has no UVs: unwrapped (its texture is laid out anew)")
    laid_out = representation.geometry()
    if mesh.vertex_colors is not None or mesh.base_color_texture is not None:
        representation.paint_from(mesh)
    else:
        notes.append(f"{mesh_path} has no colours: the body starts from uv_texture.init_color")
    body = read_body_parts(mesh_path)
    if body is not None:
        notes.append(f"{mesh_path} carries a body-part labelling ({len(np.unique(body.labels[body.labels > 0]))} "
                     "parts): regions and the pose image follow it")
    regions = mesh_regions(choices, garments, laid_out.vertices, laid_out.faces, body)
    source = make_source(model, garments, regions, laid_out.vertices, device, config.seed, source_steps,
                         config.allow_pickle)
    cameras = view_cameras(laid_out, VIEW_RESOLUTION).to(device)
    views = render_views(representation.vertices, representation.faces, representation.uvs, representation.texture,
                         cameras, regions)
    if body is not None:
        views.pose = body.pose_image(views.points, views.opacity)
    result = source.edit(views)
    projection = project(laid_out, representation.texture.image(), views, result)
    representation.texture.logits.copy_(torch.logit(projection.texture.clamp(1e-4, 1 - 1e-4)))
    fill = fill_mask(projection, regions)
    representation.freeze(~fill)
    counts = {
        "texels": int(projection.covered.sum()),
        "seen": int(projection.seen.sum()),
        "dressed": int((projection.alpha > 0.5).sum()),
        "filled_by_guidance": int(fill.sum()),
        "views": len(cameras),
        "view_resolution": VIEW_RESOLUTION,
    }
    record = {
        "source": str(mesh_path.resolve()),
        "kind": "tryon",
        "sha256": _sha256(mesh_path),
        "model": model,
        "source_steps": source_steps if model != "decal" else None,
        "garments": [{"path": str(g.path.resolve()), "sha256": _sha256(g.path), "region": choice}
                     for g, choice in zip(garments, choices, strict=True)],
    }
    return TryonSource(representation, record, views, result, counts)


def view_seams(projection: Projection, band: int) -> torch.Tensor:
    """``[S, S]`` seen texels within ``band`` texels of a view seam: a texel whose most head-on view differs from
    that of a grid neighbour lying next to it on the surface (within twice the median neighbour spacing, so
    neighbours across a UV chart boundary do not count)."""
    seen, best, points = projection.seen, projection.best_view, projection.points
    seams = torch.zeros_like(seen)
    if band < 1:
        return seams
    pairs = []
    for dim in (0, 1):
        both = seen.narrow(dim, 1, seen.shape[dim] - 1) & seen.narrow(dim, 0, seen.shape[dim] - 1)
        gap = (points.narrow(dim, 1, seen.shape[dim] - 1) - points.narrow(dim, 0, seen.shape[dim] - 1)).norm(dim=-1)
        differ = best.narrow(dim, 1, seen.shape[dim] - 1) != best.narrow(dim, 0, seen.shape[dim] - 1)
        pairs.append((dim, both, gap, differ))
    spacing = torch.cat([gap[both] for _, both, gap, _ in pairs]).median() if seen.any() else torch.tensor(0.0)
    for dim, both, gap, differ in pairs:
        edge = both & differ & (gap <= 2 * spacing)
        seams.narrow(dim, 1, seen.shape[dim] - 1).logical_or_(edge)
        seams.narrow(dim, 0, seen.shape[dim] - 1).logical_or_(edge)
    grown = F.max_pool2d(seams[None, None].float(), 2 * band - 1, stride=1, padding=band - 1)[0, 0] > 0
    return grown & seen


def fill_mask(projection: Projection, regions: list[Any], band: int = SEAM_BAND) -> torch.Tensor:
    """``[S, S]`` the texels guidance paints: covered and inside a garment's region, seen by no view or within
    ``band`` texels of a view seam (:func:`view_seams`); a gutter texel follows the covered texel nearest it."""
    inside = torch.zeros_like(projection.covered)
    for region in regions:
        inside |= region.contains(projection.points)
    fill = projection.covered & inside & (~projection.seen | view_seams(projection, band))
    spread = fill_gutters(fill.cpu().numpy()[..., None].astype(np.float32), projection.covered.cpu().numpy())
    return torch.from_numpy(spread[..., 0] > 0.5).to(fill.device)


def run_tryon(config: RunConfig, mesh_path: Path, garments: list[Garment], choices: list[str], model: str,
              out: Path, resume: bool = False, overwrite: bool = False, progress: Progress | None = None,
              source_steps: int = 30) -> dict[str, Any]:
    """Dress ``mesh_path`` into the run directory ``out``; returns generate's report (and writes the extras)."""
    progress = progress or Progress()
    notes: list[str] = []
    source = dress(mesh_path, garments, choices, model, config, resolve_device(config.device), notes, source_steps)
    for note in notes:
        progress.message(note)
    report = generate(config, out, resume=resume, progress=progress, overwrite=overwrite, source=source)
    run_dir = RunDir(out)
    write_json(run_dir.root / "tryon.json", {"model": model, "regions": choices, **source.counts})
    shown = torch.linspace(0, len(source.views.cameras) - 1, 8).round().long()
    write_png(run_dir.previews / "tryon_views.png",
              image_grid([source.views.rgb[shown], source.result.images[shown]]))
    return report
