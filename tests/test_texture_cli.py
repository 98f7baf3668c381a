"""`dreamsmith texture` through the CLI: the run directory of `generate`, resume, and one-line refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml

from dreamsmith.engine.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import assert_clean_failure, run_cli  # noqa: E402
from test_texture_stage import cube_with_uvs  # noqa: E402

SMALL = ["--set", "camera.batch_size=1", "--set", "camera.eval_views=4", "--set", "camera.eval_resolution=32",
         "--set", "export.preview_resolution=48", "--set", "uv_texture.texture_size=32",
         "--set", "preview_every=2", "--set", "checkpoint_every=2"]


@pytest.mark.slow
def test_texture_command_paints_a_users_mesh_on_tiny_sd_and_resumes(tiny_sd_dir, tmp_path):
    cube_with_uvs(tmp_path / "cube.glb")
    source = trimesh.load(tmp_path / "cube.glb", force="mesh", process=False)
    out = tmp_path / "run"
    common = [str(tmp_path / "cube.glb"), "a wooden crate", "--model", str(tiny_sd_dir), "--out", str(out),
              "--quiet", "--seed", "2", *SMALL]
    result = run_cli("texture", *common, "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    result = run_cli("texture", *common, "--steps", "4", "--resume")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == 2 and report["stages"][0]["steps"] == 4
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["final.png", "texture_000002.png",
                                                                     "texture_000004.png"]
    assert json.loads((out / "qa.json").read_text())["asset"]["status"]
    asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
    assert asset.vertices.tobytes() == source.vertices.tobytes()
    assert asset.faces.tobytes() == source.faces.tobytes()
    assert asset.visual.uv.tobytes() == source.visual.uv.tobytes()
    image = np.asarray(asset.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255
    assert np.abs(image - 0.5).max() > 0.01  # the guidance painted it


def test_texture_command_refuses_bad_meshes_in_one_line_before_writing(tmp_path):
    (tmp_path / "notes.obj").write_text("this is not a mesh\n")
    (tmp_path / "junk.glb").write_bytes(bytes(range(200)))
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    cube_with_uvs(tmp_path / "cube.glb")
    out = tmp_path / "run"
    cases = [((str(tmp_path / "missing.glb"),), "does not exist"), ((str(tmp_path / "notes.obj"),), "no faces"),
             ((str(tmp_path / "junk.glb"),), "is not a mesh trimesh can read"),
             ((str(tmp_path / "nan.obj"),), "vertex positions that are not finite numbers"),
             ((str(tmp_path / "cube.glb"), "--region", "y>>0: a red crate"), "cannot read 'y>>0'"),
             ((str(tmp_path / "cube.glb"), "--set", "uv_texture.max_faces=4"), "uv_texture.max_faces=4"),
             ((str(tmp_path / "cube.glb"), "--preset", "toy"), "no texture stage"),
             ((str(tmp_path / "cube.glb"), "--control", "height=models/cn"), "SOURCE=CONTROLNET_DIR[:SCALE]")]
    for (mesh, *options), words in cases:
        assert_clean_failure(run_cli("texture", mesh, "a crate", "--out", str(out), *options), words)
    assert not out.exists()


def controls(*entries: tuple[Path, str, float]) -> list[str]:
    specs = ", ".join(f"{{name: controlnet, model: {model}, source: {source}, scale: {scale}}}"
                      for model, source, scale in entries)
    return ["--set", f"guidance.conditioners=[{specs}]"]


def painted_texture(out: Path) -> np.ndarray:
    asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
    return np.asarray(asset.visual.material.baseColorTexture.convert("RGB"), np.float32)


@pytest.mark.slow
def test_texture_command_takes_several_controlnets_fed_by_the_assets_renders(tiny_sd_dir, tiny_controlnet_dir,
                                                                              tiny_controlnet_other_dir, tmp_path):
    cube_with_uvs(tmp_path / "cube.glb")
    common = [str(tmp_path / "cube.glb"), "a wooden crate", "--model", str(tiny_sd_dir), "--quiet", "--seed", "2",
              "--steps", "3", *SMALL]
    textures = {}
    runs = {"plain": [], "zero": controls((tiny_controlnet_dir, "depth", 0.0), (tiny_controlnet_dir, "normal", 0.0)),
            "both": ["--control", f"depth={tiny_controlnet_dir}", "--control", f"normal={tiny_controlnet_dir}:0.5"]}
    for name, options in runs.items():
        result = run_cli("texture", *common, "--out", str(tmp_path / name), *options)
        assert result.returncode == 0, result.stderr
        textures[name] = painted_texture(tmp_path / name)
    config = yaml.safe_load((tmp_path / "both" / "config.yaml").read_text())
    assert [(c["source"], c["scale"]) for c in config["stages"][0]["guidance"]["conditioners"]] == [
        ("depth", 1.0), ("normal", 0.5)]
    assert np.array_equal(textures["zero"], textures["plain"])  # scale 0: the base model exactly
    assert np.abs(textures["both"] - textures["plain"]).max() > 1  # the controls changed the painting

    result = run_cli("texture", *common, "--out", str(tmp_path / "other"),
                     *controls((tiny_controlnet_other_dir, "depth", 1.0)))
    assert_clean_failure(result, "is for another base model", "block_out_channels")


@pytest.mark.slow
def test_texture_command_decimates_a_huge_mesh_and_paints_a_non_manifold_one_with_one_line_each(tiny_sd_dir,
                                                                                                 tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces
    sphere.export(tmp_path / "sphere.glb")
    fin = trimesh.Trimesh([[0, 0, 0], [0.4, 0, 0], [0, 0.4, 0], [0, -0.4, 0], [0, 0, 0.4]],
                          [[0, 1, 2], [1, 0, 3], [0, 1, 4]], process=False)  # three faces on one edge
    fin.export(tmp_path / "fin.glb")
    cases = {"sphere": (["--set", "uv_texture.max_faces=300"], "1280 faces, more than uv_texture.max_faces=300"),
             "fin": ([], "is not manifold (1 edges shared by more than two faces)")}
    for name, (options, words) in cases.items():
        out = tmp_path / name
        result = run_cli("texture", str(tmp_path / f"{name}.glb"), "a wooden crate", "--model", str(tiny_sd_dir),
                         "--out", str(out), "--steps", "1", *SMALL, *options)
        assert result.returncode == 0, result.stderr
        notes = [line for line in result.stderr.splitlines() if words in line]
        assert len(notes) == 1 and "Traceback" not in result.stderr
        asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
        assert asset.visual.uv is not None and len(asset.visual.uv) == len(asset.vertices)
        assert len(asset.faces) <= 300 if name == "sphere" else len(asset.faces) == 3


@pytest.mark.slow
def test_texture_command_paints_regional_prompts(tiny_sd_dir, tmp_path):
    cube_with_uvs(tmp_path / "cube.glb")
    common = [str(tmp_path / "cube.glb"), "a wooden crate", "--model", str(tiny_sd_dir), "--quiet", "--seed", "2",
              "--steps", "2", *SMALL]
    regions = ["--region", "y>0: a red crate", "--region", "box(-1,-1,-1,1,0,1): a blue crate",
               "--region-base-ratio", "0"]
    for name, options in {"plain": [], "regions": regions}.items():
        result = run_cli("texture", *common, "--out", str(tmp_path / name), *options)
        assert result.returncode == 0, result.stderr
    config = yaml.safe_load((tmp_path / "regions" / "config.yaml").read_text())
    assert config["stages"][0]["guidance"]["conditioners"] == [
        {"name": "regions", "regions": ["y>0: a red crate", "box(-1,-1,-1,1,0,1): a blue crate"], "base_ratio": 0.0}]
    assert np.abs(painted_texture(tmp_path / "regions") - painted_texture(tmp_path / "plain")).max() > 1
