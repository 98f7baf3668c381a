"""The fill pass: region texels no view saw are painted by guidance while every other texel stays as
projected, through the run (checkpoint) and its resume."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from tryon_score import capsule, striped_garment  # noqa: E402

import dreamsmith.tryon.run as tryon_run  # noqa: E402
from dreamsmith.engine.checkpoint import load_checkpoint  # noqa: E402
from dreamsmith.engine.overrides import make_config  # noqa: E402
from dreamsmith.engine.run import generate  # noqa: E402
from dreamsmith.exporters.bake import rasterize_uv  # noqa: E402
from dreamsmith.tryon.garments import read_garment  # noqa: E402


def small(folder: Path) -> list[str]:
    return [f"uv_texture.mesh={folder / 'capsule.glb'}", "uv_texture.texture_size=64", "camera.batch_size=1",
            "camera.eval_views=4", "camera.eval_resolution=32", "export.preview_resolution=48", "preview_every=0",
            "checkpoint_every=0", "optim.lr_texture=0.5"]


def test_guidance_paints_only_the_unseen_region_texels(tmp_path, monkeypatch):
    capsule(tmp_path / "capsule.glb", 24)
    striped_garment(tmp_path / "stripes.png")
    one_view = tryon_run.view_cameras
    monkeypatch.setattr(tryon_run, "view_cameras", lambda mesh, resolution: one_view(mesh, resolution)[8:9])
    config = make_config("a white capsule", preset="toy-texture", steps=3, seed=0, overrides=small(tmp_path))
    notes: list[str] = []
    source = tryon_run.dress(tmp_path / "capsule.glb", [read_garment(tmp_path / "stripes.png")], ["upper"], "decal",
                             config, torch.device("cpu"), notes)
    assert any("no UVs" in note for note in notes)
    frozen = source.representation.frozen.clone()
    fill = ~frozen
    assert source.counts["filled_by_guidance"] > 0 and source.counts["seen"] < source.counts["texels"]
    before = source.representation.texture.logits.detach().clone()
    generate(config, tmp_path / "run", source=source)
    after = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["stage_state"]["texture"]["logits"]
    assert torch.equal(after[frozen], before[frozen])  # the projected and the kept texels, exactly
    mesh = source.representation.mesh
    covered = torch.from_numpy(rasterize_uv(mesh.uvs, mesh.faces, 64)[0] >= 0)
    painted = (after - before).abs().amax(-1) > 1e-3
    assert painted[fill & covered].float().mean() > 0.5  # guidance painted the unseen region texels
    resumed = make_config("a white capsule", preset="toy-texture", steps=5, seed=0, overrides=small(tmp_path))
    generate(resumed, tmp_path / "run", resume=True, source=source)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["stage_state"]
    assert torch.equal(state["frozen"], frozen.cpu())  # the mask lives in the checkpoint
    assert torch.equal(state["texture"]["logits"][frozen], before[frozen])


def test_view_seams_mark_a_band_across_view_boundaries_but_not_across_uv_chart_boundaries():
    from dreamsmith.tryon.projection import Projection

    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    points = torch.stack([cols * 0.1, rows * 0.1, torch.zeros_like(rows)], dim=-1)
    points[:4, :, 2] = 10.0  # rows 0-3: another UV chart, far away on the surface
    best = (cols >= 4).long()
    best[:4] = 2  # a different view there: no seam along the chart boundary between rows 3 and 4
    seen = torch.ones(8, 8, dtype=torch.bool)
    projection = Projection(torch.zeros(8, 8, 3), seen, seen, torch.ones(8, 8), points, best)
    assert not tryon_run.view_seams(projection, 0).any()
    one, two = tryon_run.view_seams(projection, 1), tryon_run.view_seams(projection, 2)
    assert torch.equal(one.nonzero()[:, 1].unique(), torch.tensor([3, 4])) and not one[:4].any()
    assert torch.equal(two.nonzero()[:, 1].unique(), torch.tensor([2, 3, 4, 5])) and not two[:3].any()
    assert torch.equal(one[4:], (cols[4:] == 3) | (cols[4:] == 4))
