"""`dreamsmith edit` through the CLI: a new run directory from a finished run or a coloured mesh, the source
never touched, resume, and one-line refusals (usage errors before torch loads)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
import yaml

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.config import to_dict
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import generate
from dreamsmith.engine.stages import TextureRepresentation
from dreamsmith.exporters.gltf import write_glb
from dreamsmith.exporters.uv import unwrap
from dreamsmith.representations.mesh import Mesh

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_usage import run_cli as run_probe  # noqa: E402
from test_generate import SMALL, assert_clean_failure, run_cli  # noqa: E402

MESH_SMALL = ["--set", "camera.batch_size=1", "--set", "camera.eval_views=4", "--set", "camera.eval_resolution=32",
              "--set", "export.preview_resolution=48", "--set", "uv_texture.texture_size=32",
              "--set", "preview_every=2", "--set", "checkpoint_every=2"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its content's hash (what "untouched" means)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def source_run(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run of "a red cube" on the tiny text-only model."""
    out = tmp_path_factory.mktemp("source") / "red-cube"
    generate(make_config("a red cube", model=str(tiny_sd_dir), steps=2, seed=4, overrides=SMALL), out)
    return out


def split_texture_cube(path: Path) -> np.ndarray:
    """A cube whose 32² texture is red on its left half and blue on its right, as a GLB; returns the texture
    as the file holds it (8-bit)."""
    box = trimesh.creation.box(extents=(0.6,) * 3)
    texture = np.zeros((32, 32, 3), np.float32)
    texture[:, :16, 0] = 0.9
    texture[:, 16:, 2] = 0.9
    write_glb(path, unwrap(Mesh(box.vertices, box.faces), 32).copy(base_color_texture=texture))
    return np.round(texture * 255) / 255


def test_edit_of_a_run_is_a_new_run_directory_started_from_the_source(source_run, tiny_sd_dir, tiny_ip2p_dir,
                                                                     tmp_path):
    before = tree_digest(source_run)
    out = tmp_path / "blue"
    common = [str(source_run), "make it blue", "--model", str(tiny_ip2p_dir), "--out", str(out), "--quiet",
              "--keep", "geometry"]
    result = run_cli("edit", *common, "--steps", "2")
    assert result.returncode == 0, result.stderr
    result = run_cli("edit", *common, "--steps", "4", "--resume")
    assert result.returncode == 0, result.stderr
    assert tree_digest(source_run) == before  # the source is only read
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompt"] == "make it blue" and config["model"] == str(tiny_ip2p_dir) and config["seed"] == 4
    (stage,) = config["stages"]
    assert stage["guidance"]["name"] == "ip2p" and stage["nerf"]["optimize_geometry"] is False
    record = json.loads((out / "edit.json").read_text())
    assert record == {"source": str(source_run.resolve()), "kind": "run", "prompt": "a red cube", "seed": 4,
                      "model": str(tiny_sd_dir)}
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == 2 and report["stages"][0]["steps"] == 4
    assert report["final_losses"]["image_guidance_scale"] == 1.5 and report["final_losses"]["guidance_scale"] == 7.5
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["edit_000002.png", "edit_000004.png", "final.png"]
    for name in ("asset.glb", "qa.json", "asset_poster.png"):
        assert (out / name).stat().st_size > 0, name
    # it started as the source, and --keep geometry trained the albedo head alone
    source = load_checkpoint(source_run / "checkpoints" / "last.pt")["stage_state"]["field"]
    edited = load_checkpoint(out / "checkpoints" / "last.pt")["stage_state"]["field"]
    geometry = [k for k in source if not k.startswith("albedo_head")]
    assert geometry and all(torch.equal(source[k], edited[k]) for k in geometry)
    assert any(not torch.equal(source[k], edited[k]) for k in source if k.startswith("albedo_head"))


def test_edit_without_keep_trains_the_shape_too_and_resume_must_name_the_same_source(source_run, tiny_ip2p_dir,
                                                                                     tmp_path):
    out = tmp_path / "sphere"
    result = run_cli("edit", str(source_run), "make it round", "--model", str(tiny_ip2p_dir), "--out",
                     str(out), "--quiet", "--steps", "2", "--image-guidance", "2.0", "--text-guidance", "5")
    assert result.returncode == 0, result.stderr
    guidance = yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["guidance"]
    assert guidance == {"name": "ip2p", "guidance_scale": 5.0, "image_guidance_scale": 2.0}
    source = load_checkpoint(source_run / "checkpoints" / "last.pt")["stage_state"]["field"]
    edited = load_checkpoint(out / "checkpoints" / "last.pt")["stage_state"]["field"]
    assert any(not torch.equal(source[k], edited[k]) for k in source if k.startswith("density_head"))
    other = tmp_path / "same-settings-other-run"  # another source whose settings are the same
    shutil.copytree(source_run, other)
    assert_clean_failure(run_cli("edit", str(other), "make it round", "--model", str(tiny_ip2p_dir), "--out",
                                 str(out), "--steps", "4", "--resume", "--image-guidance", "2.0", "--text-guidance",
                                 "5"), "cannot resume", f"does not edit {other.resolve()}")
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2


def test_a_p2p_edit_injects_the_source_runs_prompt_with_the_source_runs_model(source_run, tiny_sd_dir, tmp_path):
    out = tmp_path / "p2p"
    result = run_cli("edit", str(source_run), "a blue cube", "--method", "p2p", "--reweight", "blue=2",
                     "--out", str(out), "--quiet", "--steps", "2")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == str(tiny_sd_dir) and config["prompt"] == "a blue cube"
    assert config["stages"][0]["guidance"] == {"name": "p2p", "source_prompt": "a red cube",
                                               "reweight": {"blue": 2.0}}
    assert json.loads((out / "report.json").read_text())["final_losses"]["cross_replace"] == 0.8
    assert (out / "asset.glb").stat().st_size > 0 and (out / "edit.json").is_file()


def test_edit_of_a_textured_mesh_paints_it_from_its_own_texture_and_keeps_its_geometry(tiny_ip2p_dir, tmp_path):
    mesh_file = tmp_path / "cube.glb"
    split_texture_cube(mesh_file)
    before = mesh_file.read_bytes()
    out = tmp_path / "edit"
    result = run_cli("edit", str(mesh_file), "make it green", "--model", str(tiny_ip2p_dir), "--out", str(out),
                     "--quiet", "--steps", "2", *MESH_SMALL)
    assert result.returncode == 0, result.stderr
    assert mesh_file.read_bytes() == before
    record = json.loads((out / "edit.json").read_text())
    assert record == {"source": str(mesh_file.resolve()), "kind": "mesh",
                      "sha256": hashlib.sha256(before).hexdigest()}
    source = trimesh.load(mesh_file, force="mesh", process=False)
    asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
    assert asset.vertices.tobytes() == source.vertices.tobytes() and asset.faces.tobytes() == source.faces.tobytes()
    for name in ("config.yaml", "checkpoints/last.pt", "previews/final.png", "qa.json", "report.json"):
        assert (out / name).is_file(), name


def test_a_mesh_source_starts_from_its_texture_or_its_vertex_colours(tmp_path):
    from dreamsmith.engine.mesh_input import read_user_mesh

    textured = tmp_path / "cube.glb"
    expected = split_texture_cube(textured)
    config = make_config("make it green", preset="toy-texture",
                         overrides=[f"uv_texture.mesh={textured}", "uv_texture.texture_size=32"]).stages[0]
    painted = TextureRepresentation(config, torch.device("cpu"))
    painted.paint_from(read_user_mesh(textured, 10_000).mesh)
    assert np.abs(painted.texture.image().detach().numpy() - expected).max() < 1e-3

    box = trimesh.creation.box(extents=(0.6,) * 3)
    box.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(box.vertices), 1)).astype(np.uint8)
    coloured = tmp_path / "red.glb"
    box.export(coloured)
    config = make_config("make it green", preset="toy-texture",
                         overrides=[f"uv_texture.mesh={coloured}", "uv_texture.texture_size=32"]).stages[0]
    painted = TextureRepresentation(config, torch.device("cpu"))
    painted.paint_from(read_user_mesh(coloured, 10_000).mesh)
    np.testing.assert_allclose(painted.texture.image().detach().numpy().reshape(-1, 3).mean(0),
                               np.array([200, 30, 30]) / 255, atol=1e-3)


def test_an_in2n_edit_fits_the_run_or_the_mesh_to_its_edited_views_through_the_cli(source_run, tiny_ip2p_dir,
                                                                                   tmp_path):
    in2n = ["--method", "in2n", "--model", str(tiny_ip2p_dir), "--quiet", "--steps", "3",
            "--set", "guidance.views=3", "--set", "guidance.edit_every=2", "--set", "guidance.ddim_steps=2"]
    before = tree_digest(source_run)
    out = tmp_path / "blue"
    result = run_cli("edit", str(source_run), "make it blue", "--out", str(out), "--image-guidance", "2.0",
                     "--keep", "geometry", *in2n)
    assert result.returncode == 0, result.stderr
    assert tree_digest(source_run) == before
    source = load_checkpoint(source_run / "checkpoints" / "last.pt")["stage_state"]["field"]
    edited = load_checkpoint(out / "checkpoints" / "last.pt")["stage_state"]["field"]
    geometry = [k for k in source if not k.startswith("albedo_head")]  # --keep geometry: the albedo head alone
    assert geometry and all(torch.equal(source[k], edited[k]) for k in geometry)
    assert any(not torch.equal(source[k], edited[k]) for k in source if k.startswith("albedo_head"))
    guidance = yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["guidance"]
    assert guidance == {"name": "in2n", "image_guidance_scale": 2.0, "views": 3, "edit_every": 2, "ddim_steps": 2}
    report = json.loads((out / "report.json").read_text())
    assert report["final_losses"]["edits"] == 2 and report["final_losses"]["image_guidance_scale"] == 2.0
    dataset = load_checkpoint(out / "checkpoints" / "last.pt")["stage_state"]["guidance"]["dataset"]
    assert dataset["edited_at"].tolist() == [0, 2, -1] and dataset["images"].shape == (3, 32, 32, 3)
    assert not torch.equal(dataset["images"][0], dataset["originals"][0])
    assert torch.equal(dataset["images"][2], dataset["originals"][2])
    assert (out / "asset.glb").stat().st_size > 0

    mesh_file = tmp_path / "cube.glb"  # a mesh source: the texture stage fits its texels to the edited views
    split_texture_cube(mesh_file)
    out = tmp_path / "mesh-edit"
    result = run_cli("edit", str(mesh_file), "make it green", "--out", str(out), *in2n, *MESH_SMALL)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(out / "checkpoints" / "last.pt")["stage_state"]
    assert state["guidance"]["dataset"]["edits"] == 2 and "texture" in state
    mesh = trimesh.load(mesh_file, force="mesh", process=False)
    asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
    assert asset.vertices.tobytes() == mesh.vertices.tobytes()


def fake_finished_run(folder: Path, model: Path, finished: bool = True) -> Path:
    """A run directory's config.yaml (and report.json when ``finished``), without running anything."""
    folder.mkdir(parents=True)
    config = make_config("a red cube", model=str(model), steps=2, overrides=SMALL)
    (folder / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    if finished:
        (folder / "report.json").write_text("{}")
    return folder


def test_usage_errors_are_one_line_before_torch_loads_and_write_nothing(tiny_sd_dir, tiny_ip2p_dir, tmp_path):
    run = fake_finished_run(tmp_path / "run", tiny_sd_dir)
    unfinished = fake_finished_run(tmp_path / "unfinished", tiny_sd_dir, finished=False)
    (tmp_path / "notes.obj").write_text("this is not a mesh\n")
    (tmp_path / "plain.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (tmp_path / "not-a-run").mkdir()
    out = tmp_path / "out"
    model = ["--model", str(tiny_ip2p_dir), "--out", str(out)]
    cases = [
        ([str(tmp_path / "missing.glb"), "make it blue", *model], "does not exist; SOURCE is a finished run"),
        ([str(tmp_path / "not-a-run"), "make it blue", *model], "not a dreamsmith run directory"),
        ([str(tmp_path / "notes.obj"), "make it blue", *model], "no faces"),
        ([str(tmp_path / "plain.obj"), "make it blue", *model], "neither a texture nor vertex colours"),
        ([str(unfinished), "make it blue", *model], "has not finished"),
        ([str(run), "   ", *model], "the instruction is empty"),
        ([str(run), "make it blue", "--model", str(tiny_sd_dir), "--out", str(out)],
         "guidance ip2p needs an InstructPix2Pix-style model"),
        ([str(run), "make it blue", "--method", "sdedit", *model], "unknown --method 'sdedit'"),
        ([str(run), "make it blue", "--method", "in2n", "--model", str(tiny_sd_dir), "--out", str(out)],
         "guidance in2n needs an InstructPix2Pix-style model"),
        ([str(run), "a blue cube", "--method", "p2p", "--reweight", "fluffy=2", "--out", str(out)],
         "--reweight 'fluffy' is not a word of the prompt 'a blue cube'"),
        ([str(run), "a blue cube", "--method", "p2p", "--reweight", "blue", "--out", str(out)], "is not WORD=WEIGHT"),
        ([str(run), "make it blue", "--reweight", "blue=2", *model], "--reweight is for --method p2p"),
        ([str(tmp_path / "plain.obj"), "a blue cube", "--method", "p2p", "--out", str(out)], "needs --source-prompt"),
        ([str(run), "a blue cube", "--method", "p2p", "--model", str(tiny_ip2p_dir), "--out", str(out)],
         "is an image-conditioned"),
        ([str(run), "make it blue", "--keep", "shape", *model], "unknown --keep 'shape'"),
        ([str(tmp_path / "plain.obj"), "make it blue", "--keep", "none", *model], "--keep none needs a run"),
        ([str(run), "make it blue", "--model", str(tiny_ip2p_dir), "--out", str(run / "edit")],
         "the source is never modified"),
    ]
    for args, message in cases:
        result, stderr = run_probe("edit", *args)
        assert result == {"code": 1, "torch": False, "diffusers": False}, (args, stderr)
        assert message in stderr and "Traceback" not in stderr, (message, stderr)
        assert len(stderr.strip().splitlines()) <= 2, stderr
    assert not out.exists() and not (run / "edit").exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "report.json"]
