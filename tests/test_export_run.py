"""Exporting a run directory, through the engine and the `dreamsmith export` command."""

import json
from pathlib import Path

import pytest
import torch
import trimesh
from export_shapes import validate_gltf
from typer.testing import CliRunner

from dreamsmith.cli import app
from dreamsmith.engine.checkpoint import save_checkpoint
from dreamsmith.engine.config import to_dict
from dreamsmith.engine.export import export_run
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run_dir import RunDir, write_yaml
from dreamsmith.engine.stage import REPRESENTATIONS
from dreamsmith.errors import RunDirError

SMALL = ["nerf.hash_grid.n_levels=4", "nerf.hash_grid.log2_hashmap_size=12", "export.isosurface_resolution=64"]


def write_run(root: Path, step: int, steps: int = 2) -> Path:
    """A toy run directory whose checkpoint is at ``step`` of its one stage: the untrained field's
    density blob (a lumpy ball) is its surface."""
    config = make_config("a blue sphere", preset="toy", steps=steps, seed=0, overrides=SMALL)
    run = RunDir(root)
    run.prepare()
    write_yaml(run.config, to_dict(config))
    torch.manual_seed(0)
    representation = REPRESENTATIONS["nerf"](config.stages[0], torch.device("cpu"))
    save_checkpoint(run.last_checkpoint, {"stage_index": 0, "stage_name": "coarse", "step": step, "global_step": step,
                                          "stage_state": representation.state_dict(), "reports": [],
                                          "config": to_dict(config)})
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"), step=2)


def test_export_run_writes_a_valid_textured_asset_with_the_prompt(finished_run, tmp_path):
    result = export_run(finished_run, formats=["glb", "obj"], texture_size=128, max_triangles=600, lods=1,
                        out=tmp_path, preview_resolution=0)
    assert {p.name for p in tmp_path.iterdir()} == {
        "asset.glb", "asset.obj", "asset.mtl", "asset_basecolor.png", "qa.json",
        "asset_lod1.glb", "asset_lod1.obj", "asset_lod1.mtl", "asset_lod1_basecolor.png"}
    report = validate_gltf(tmp_path / "asset.glb")
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0
    assert abs(result.mesh.n_faces - 600) <= 30
    loaded = trimesh.load(tmp_path / "asset.glb", force="mesh", process=False)
    assert len(loaded.faces) == result.mesh.n_faces == len(trimesh.load(tmp_path / "asset.obj", force="mesh").faces)
    data = (tmp_path / "asset.glb").read_bytes()
    document = json.loads(data[20 : 20 + int.from_bytes(data[12:16], "little")])
    assert document["asset"]["extras"] == {"prompt": "a blue sphere", "preset": "toy", "seed": 0,
                                           "model": "embedded:toyworld"}


def test_an_unfinished_run_is_refused_and_nothing_is_written(tmp_path):
    run = write_run(tmp_path / "run", step=1)
    with pytest.raises(RunDirError, match=r"has not finished: its checkpoint is at step 1 of 2 of stage 'coarse'"):
        export_run(run, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (run / "asset.glb").exists()


def test_a_corrupt_checkpoint_or_a_missing_config_is_one_clear_error(finished_run, tmp_path):
    broken = write_run(tmp_path / "broken", step=2)
    checkpoint = broken / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a checkpoint cut short
    with pytest.raises(RunDirError, match="is damaged"):
        export_run(broken)
    with pytest.raises(RunDirError, match="no config.yaml"):
        export_run(tmp_path)
    with pytest.raises(RunDirError, match="is not a directory"):
        export_run(tmp_path / "nowhere")
    assert {p.name for p in broken.iterdir()} == {"config.yaml", "checkpoints", "previews"}


def test_cli_export_prints_the_qa_table_and_writes_the_files(finished_run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(finished_run), "--format", "glb", "gltf", "--texture-size", "128",
                                      "--max-triangles", "1000", "--out", str(tmp_path), "--preview-size", "32"])
    assert result.exit_code == 0, result.output
    assert "QA:" in result.output and "texel density" in result.output
    names = {p.name for p in tmp_path.iterdir()}
    assert {"asset.glb", "asset.gltf", "asset.bin", "asset_poster.png", "asset_turntable.mp4", "qa.json"} <= names
    assert len(trimesh.load(tmp_path / "asset.gltf", force="mesh").faces) == json.loads(
        (tmp_path / "qa.json").read_text())["asset"]["metrics"]["triangles"]


@pytest.mark.parametrize("arguments, message", [
    (["--texture-size", "1000"], "--texture-size 1000 is not a power of two"),
    (["--max-triangles", "50"], "--max-triangles 50 is below the minimum of 100"),
    (["--format", "glb", "fbx"], "unknown export format 'fbx'"),
    (["--out", "/proc/forbidden"], "cannot write to /proc/forbidden"),
    (["--scale", "inf"], "--scale inf must be a positive size in metres"),
    (["--scale", "nan"], "--scale nan must be a positive size in metres"),
    (["--lods", "30"], "--lods 30 is more than any mesh can use: at most 10"),
    (["--lods", "4", "--max-triangles", "1000"], "--lods 4 is more than --max-triangles 1000 allows: at most 3"),
    (["--preview-size", "100000"], "--preview-size 100000 must be 0 (no previews) or a multiple of 16 from 32"),
])
def test_cli_bad_input_is_one_line_and_a_non_zero_exit(finished_run, arguments, message):
    result = CliRunner().invoke(app, ["export", str(finished_run), *arguments])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (finished_run / "asset.glb").exists()
