"""The texture stage: a UV texture on fixed geometry, trained through the stage loop, exported exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.mesh_input import load_fixed_mesh
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import generate
from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.bake import sample_texture
from dreamsmith.exporters.gltf import write_glb
from dreamsmith.exporters.uv import unwrap
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.uv_texture import UVTexture
from dreamsmith.toyworld import world as toyworld

sys.path.insert(0, str(Path(__file__).parent))
from test_dmtet_stage import ALBEDO, cube_oracle  # noqa: E402

GREY = 0.5


def cube_with_uvs(path: Path) -> Mesh:
    """A toyworld-sized cube with its own (unwrapped) UVs and a grey texture, written as a GLB."""
    box = trimesh.creation.box(extents=(toyworld.CUBE_EDGE,) * 3)
    mesh = unwrap(Mesh(box.vertices, box.faces), 64).copy(base_color_texture=np.full((8, 8, 3), GREY, np.float32))
    write_glb(path, mesh)
    return mesh


def texture_config(mesh: Path, steps: int, *extra: str):
    overrides = [f"uv_texture.mesh={mesh}", f"texture.steps={steps}", "uv_texture.texture_size=32",
                 "camera.batch_size=2", "camera.eval_views=4", "camera.eval_resolution=32",
                 "export.preview_resolution=48", "preview_every=0", "checkpoint_every=0", *extra]
    return make_config("a blue cube", preset="toy-texture", seed=1, overrides=overrides)


def texture_colour(asset: trimesh.Trimesh) -> np.ndarray:
    """Mean colour of the asset's texture under its vertices' UVs."""
    image = np.asarray(asset.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255
    return sample_texture(image, np.asarray(asset.visual.uv)).mean(0)


def test_uv_texture_lookup_matches_the_exporters_bilinear_sampler():
    texture = UVTexture(5)
    with torch.no_grad():
        texture.logits.copy_(torch.randn(5, 5, 3, generator=torch.Generator().manual_seed(0)))
    uvs = torch.rand(64, 2, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.1
    expected = sample_texture(texture.image().detach().numpy(), uvs.numpy())
    assert np.allclose(texture(uvs).detach().numpy(), expected, atol=1e-6)


@pytest.mark.slow
def test_texture_stage_paints_the_mesh_and_exports_its_positions_indices_and_uvs_byte_identical(tmp_path):
    cube_with_uvs(tmp_path / "cube.glb")
    source = trimesh.load(tmp_path / "cube.glb", force="mesh", process=False)
    report = generate(texture_config(tmp_path / "cube.glb", 40), tmp_path / "run", prior=cube_oracle())
    assert [s["steps"] for s in report["stages"]] == [40]

    asset = trimesh.load(tmp_path / "run" / "asset.glb", force="mesh", process=False)
    # as the file holds them (trimesh reads float32 positions and glTF's flipped v exactly)
    assert asset.vertices.tobytes() == source.vertices.tobytes()
    assert asset.faces.tobytes() == source.faces.tobytes()
    assert asset.visual.uv.tobytes() == source.visual.uv.tobytes()
    # the grey texture moved towards the oracle's blue
    before = np.abs(GREY - ALBEDO.numpy()).mean()
    after = np.abs(texture_colour(asset) - ALBEDO.numpy()).mean()
    assert after < 0.6 * before, (before, after)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["stage_state"]
    assert np.array_equal(state["geometry"]["vertices"].numpy(), source.vertices)
    assert texture_colour(source)[2] == pytest.approx(GREY, abs=0.01)


@pytest.mark.slow
def test_a_mesh_without_uvs_is_unwrapped_and_keeps_its_triangles(tmp_path):
    box = trimesh.creation.box(extents=(toyworld.CUBE_EDGE,) * 3)
    box.export(tmp_path / "box.obj")
    generate(texture_config(tmp_path / "box.obj", 4), tmp_path / "run", prior=cube_oracle())
    asset = trimesh.load(tmp_path / "run" / "asset.glb", force="mesh", process=False)
    assert len(asset.faces) == 12 and asset.visual.uv is not None
    corners = np.unique(np.round(np.asarray(asset.vertices), 6), axis=0)
    assert np.allclose(np.sort(corners, axis=0), np.sort(box.vertices, axis=0), atol=1e-6)


def test_bad_mesh_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "notes.obj").write_text("this is not a mesh\n")
    trimesh.PointCloud(np.random.default_rng(0).random((5, 3))).export(tmp_path / "points.ply")
    cube_with_uvs(tmp_path / "cube.glb")
    cases = {tmp_path / "missing.glb": "does not exist", tmp_path / "notes.obj": "no faces",
             tmp_path / "points.ply": "no faces"}
    for path, words in cases.items():
        with pytest.raises(DreamsmithError, match=words) as error:
            load_fixed_mesh(path, 1000)
        assert "\n" not in str(error.value)
    with pytest.raises(DreamsmithError, match="uv_texture.max_faces=10") as error:
        load_fixed_mesh(tmp_path / "cube.glb", 10)
    assert "\n" not in str(error.value)


def test_without_a_mesh_file_the_stage_paints_the_previous_dmtets_surface_starting_from_its_albedo():
    from dreamsmith.engine.config import ExportConfig
    from dreamsmith.engine.stages import DMTetRepresentation, TextureRepresentation

    config = make_config("a blue cube", preset="toy-mesh", overrides=["fine.dmtet.resolution=16"]).stages[1]
    dmtet = DMTetRepresentation(config, torch.device("cpu"))
    textured = make_config("a blue cube", preset="toy-texture", overrides=["uv_texture.texture_size=32"]).stages[0]
    stage = TextureRepresentation(textured, torch.device("cpu"))
    stage.init_from(dmtet, ExportConfig())
    surface = dmtet.export_mesh(ExportConfig())
    assert stage.mesh.n_faces == surface.n_faces and stage.mesh.uvs is not None
    assert np.array_equal(np.unique(stage.mesh.vertices, axis=0), np.unique(surface.vertices, axis=0))
    colours = stage.texture(torch.from_numpy(stage.mesh.uvs)).detach().numpy()
    expected = dmtet.albedo(torch.from_numpy(stage.mesh.vertices)).detach().numpy()
    assert np.abs(colours - expected).mean() < 0.02  # the DMTet's albedo, baked into the atlas


@pytest.mark.slow
def test_a_finished_texture_run_exports_again_after_its_mesh_file_is_gone(tmp_path):
    from dreamsmith.engine.export import export_run

    cube_with_uvs(tmp_path / "cube.glb")
    source = trimesh.load(tmp_path / "cube.glb", force="mesh", process=False)
    generate(texture_config(tmp_path / "cube.glb", 2), tmp_path / "run", prior=cube_oracle())
    (tmp_path / "cube.glb").unlink()
    export_run(tmp_path / "run", out=tmp_path / "again", preview_resolution=0)
    asset = trimesh.load(tmp_path / "again" / "asset.glb", force="mesh", process=False)
    assert asset.vertices.tobytes() == source.vertices.tobytes()
    assert asset.visual.uv.tobytes() == source.visual.uv.tobytes()
