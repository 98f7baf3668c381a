"""The main job through the CLI and the engine: files written, resume, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import trimesh
import yaml

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import Progress, generate

# A NeRF and renders small enough that a step takes a fraction of a second on the CPU.
SMALL = [
    "camera.resolution=32",
    "camera.eval_resolution=32",
    "camera.eval_views=4",
    "renderer.n_samples=24",
    "nerf.hash_grid.n_levels=4",
    "nerf.hash_grid.log2_hashmap_size=14",
    "export.isosurface_resolution=40",
    "export.texture_size=256",
    "export.preview_resolution=48",
    "preview_every=2",
    "checkpoint_every=2",
    "shading.albedo_steps=2",
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("DREAMSMITH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "dreamsmith", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_generate_writes_every_file_of_the_run_directory(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    result = run_cli("generate", "a hamburger", "--model", str(tiny_sd_dir), "--steps", "4", "--seed", "3",
                     "--out", str(out), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompt"] == "a hamburger" and config["seed"] == 3 and config["stages"][0]["steps"] == 4
    assert config["stages"][0]["camera"]["resolution"] == 32
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.pt"]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4
    previews = sorted(p.name for p in (out / "previews").iterdir())
    assert previews == ["coarse_000002.png", "coarse_000004.png", "final.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] is None and report["seed"] == 3 and report["device"] == "cpu"
    assert report["stages"][0]["steps"] == 4 and report["stages"][0]["wall_time_s"] > 0
    assert "loss" in report["final_losses"] and report["versions"]["torch"] == torch.__version__
    for name in ("asset_turntable.gif", "asset_turntable.mp4", "asset_poster.png", "qa.json"):
        assert (out / name).stat().st_size > 0, name
    mesh = trimesh.load(out / "asset.glb", force="mesh")
    assert len(mesh.faces) == report["asset"]["faces"] > 0
    extent = mesh.bounds[1] - mesh.bounds[0]
    assert (extent < 2.0).all()  # metres, inside the field's cube


def _params(out: Path) -> dict:
    return load_checkpoint(out / "checkpoints" / "last.pt")["stage_state"]["field"]


def _config(model: Path, steps: int):
    return make_config("a hamburger", model=str(model), steps=steps, seed=1, overrides=SMALL)


class StopAt(Progress):
    """Simulates a user's Ctrl-C after ``step`` steps."""

    def __init__(self, step: int) -> None:
        self.stop = step

    def step(self, step: int, loss: float, logs: dict) -> None:
        if step == self.stop:
            raise KeyboardInterrupt


def test_resume_after_interruption_and_extension_match_an_uninterrupted_run(tiny_sd_dir, tmp_path):
    generate(_config(tiny_sd_dir, 6), tmp_path / "straight")

    with pytest.raises(KeyboardInterrupt):
        generate(_config(tiny_sd_dir, 6), tmp_path / "interrupted", progress=StopAt(3))
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")["step"] == 3
    assert not (tmp_path / "interrupted" / "asset.glb").exists()
    report = generate(_config(tiny_sd_dir, 6), tmp_path / "interrupted", resume=True)
    assert report["resumed_from_step"] == 3

    generate(_config(tiny_sd_dir, 4), tmp_path / "extended")
    report = generate(_config(tiny_sd_dir, 6), tmp_path / "extended", resume=True)
    assert report["resumed_from_step"] == 4 and report["stages"][0]["steps"] == 6

    straight = _params(tmp_path / "straight")
    for name in ("interrupted", "extended"):
        resumed = _params(tmp_path / name)
        assert all(torch.equal(straight[k], resumed[k]) for k in straight), name


def test_resume_refuses_a_changed_config(tiny_sd_dir, tmp_path):
    generate(_config(tiny_sd_dir, 2), tmp_path / "run")
    changed = make_config("a hamburger", model=str(tiny_sd_dir), steps=4, seed=2, overrides=SMALL)
    with pytest.raises(Exception, match="'seed' differs"):
        generate(changed, tmp_path / "run", resume=True)


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    message = " ".join(lines)
    assert message.startswith("error:"), result.stderr
    for needle in needles:
        assert needle in message, message


def test_missing_model_fails_cleanly_without_writing_a_run(tmp_path):
    out = tmp_path / "run"
    result = run_cli("generate", "a hamburger", "--model", str(tmp_path / "nowhere"), "--out", str(out))
    assert_clean_failure(result, "nowhere")
    assert not out.exists()


def test_bad_input_fails_with_one_message_and_no_asset(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    model = ["--model", str(tiny_sd_dir), "--out", str(out)]
    assert_clean_failure(run_cli("generate", "a hamburger", *model, "--steps", "-3"), "--steps")
    assert_clean_failure(run_cli("generate", "a hamburger", *model, "guidance.guidanse_scale=3"),
                         "guidance.guidanse_scale", "guidance.guidance_scale")
    assert_clean_failure(run_cli("generate", "   ", *model), "prompt is empty")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clean_failure(run_cli("generate", "a hamburger", "--model", str(tiny_sd_dir), "--out",
                                 str(blocker / "run"), "--steps", "1", *SMALL), "cannot write")
    assert_clean_failure(run_cli("generate", "a hamburger", *model, "--resume"), "config.yaml")
    assert not (out / "asset.glb").exists()


def test_help_documents_every_option():
    result = run_cli("generate", "--help")
    assert result.returncode == 0
    for option in ("--preset", "--model", "--steps", "--seed", "--device", "--out", "--resume", "--quiet"):
        assert option in result.stdout
