"""Bad input and hostile conditions: each gives one clear line (or the correct result), never a
traceback, an internal error, a silently wrong asset, a file outside the run directory, or lost work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_generate import SMALL, assert_clean_failure, run_cli

from dreamsmith.engine.checkpoint import load_checkpoint, save_checkpoint
from dreamsmith.engine.overrides import make_config, split_steps
from dreamsmith.engine.run import Progress, generate
from dreamsmith.engine.run_dir import RunDir
from dreamsmith.errors import ConfigError, ModelLoadError, RunDirError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("name=../../../ESCAPED", "cannot be used in file names"),
        ("coarse.name=/abs/path", "cannot be used in file names"),
        ("export.name=../asset", "cannot be used in file names"),
        ("guidance.guidance_scale=.nan", "finite"),
        ("optim.lr_mlp=.inf", "finite"),
        ("optim.lr_encoding=-0.1", "between 0 and inf"),
        ("camera.resolution=true", "must be an integer"),
        ("camera.resolution=0", "between 8 and 4096"),
        ("camera.resolution=-4", "between 8 and 4096"),
        ("camera.batch_size=0", "between 1 and 256"),
        ("camera.elevation_range=5", "must be a list"),
        ("camera.elevation_range=[0, 10, 20]", "must have 2 values"),
        ("camera.elevation_range=[50, 10]", "low <= high"),
        ("export.isosurface_resolution=0", "between 8 and 512"),
        ("export.isosurface_resolution=100000", "between 8 and 512"),
        ("seed=100000000000000000000000", "between 0 and"),
        ("nerf.hash_grid.log2_hashmap_size=40", "between 8 and 24"),
        ("export.texture_size=3", "power of two"),
        ("export.formats=[glb, fbx]", "unknown export format 'fbx'"),
        ("guidance.max_step_percent=[0, 0.98, 0.5]", "start_step"),
    ],
)
def test_values_that_would_make_wrong_output_are_refused_by_key(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config("a red cube", preset="toy", overrides=[override])


def test_steps_span_the_whole_run_in_the_presets_proportions():
    config = make_config("a hamburger", preset="magic3d", steps=10)
    assert [s.steps for s in config.stages] == [6, 4]  # magic3d's 10000 : 5000
    config = make_config("a hamburger", preset="magic3d", steps=10, overrides=["fine.steps=2"])
    assert [s.steps for s in config.stages] == [6, 2]
    assert split_steps(7, [400, 0]) == [7, 0] and split_steps(5, [0, 0]) == [0, 5]


def small_config(model: Path, steps: int = 2, prompt: str = "a hamburger", *extra: str):
    return make_config(prompt, model=str(model), steps=steps, seed=1, overrides=[*SMALL, *extra])


def test_a_finished_run_is_not_replaced_without_overwrite(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    generate(small_config(tiny_sd_dir), out)
    before = (out / "asset.glb").read_bytes()
    with pytest.raises(RunDirError, match="already holds a run.*--overwrite"):
        generate(small_config(tiny_sd_dir, 2, "a pizza"), out)
    assert (out / "asset.glb").read_bytes() == before
    assert yaml.safe_load((out / "config.yaml").read_text())["prompt"] == "a hamburger"
    report = generate(small_config(tiny_sd_dir, 2, "a pizza"), out, overwrite=True)
    assert report["prompt"] == "a pizza"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["identity"]["prompt"] == "a pizza"


def test_resume_refuses_a_checkpoint_of_another_run(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    generate(small_config(tiny_sd_dir), out)
    other = small_config(tiny_sd_dir, 2, "a pizza")
    (out / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(_plain(other)))))  # config edited to match
    with pytest.raises(RunDirError, match="belongs to another run.*'a hamburger'"):
        generate(other, out, resume=True)
    (out / "config.yaml").write_text("stages: [unclosed\n")
    with pytest.raises(RunDirError, match="changed by hand or damaged"):
        generate(other, out, resume=True)


def _plain(config):
    from dreamsmith.engine.config import to_dict

    return to_dict(config)


def test_a_second_run_into_a_locked_directory_is_refused(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    with RunDir(out).lock(), pytest.raises(RunDirError, match="in use by another dreamsmith run \\(pid"):
        generate(small_config(tiny_sd_dir), out)
    generate(small_config(tiny_sd_dir), out)  # released: the same run now goes through


def test_two_processes_into_one_directory_one_is_refused(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    args = ["generate", "a hamburger", "--model", str(tiny_sd_dir), "--out", str(out), "--quiet", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "dreamsmith", *args, "--steps", "400", "checkpoint_every=400",
                              "preview_every=0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "config.yaml").exists(), first)
        second = run_cli(*args, "--steps", "2")
        assert_clean_failure(second, "in use by another dreamsmith run")
    finally:
        first.send_signal(2)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    # the console wraps the message at its width, where the run directory's path length puts the breaks
    assert "continue with --resume" in " ".join(stderr.split()) and "Traceback" not in stderr


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_user_text_with_brackets_reaches_messages_intact(tmp_path):
    model = tmp_path / "models[v2]"
    result = run_cli("generate", "a [bold]red[/bold] cube", "--model", str(model), "--out", str(tmp_path / "o"))
    assert_clean_failure(result, "models[v2]")
    result = run_cli("generate", "a cube", "--model", str(model), "guidance.guidance_scale=[0, 1]")
    assert_clean_failure(result, "[start_step, start_value, end_value, end_step]")


def test_a_prompt_without_letters_gets_its_own_default_folder(tmp_path):
    from dreamsmith.cli import _slug

    assert _slug("🎲🎲") != _slug("🧊") and _slug("🎲🎲").startswith("run-")
    assert _slug("a Red cube!") == "a-red-cube"


class Messages(Progress):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_prompt_longer_than_the_encoder_reads_is_warned_about(tiny_sd_dir, tmp_path):
    messages = Messages()
    generate(small_config(tiny_sd_dir, 1, "a very long hamburger " * 4), tmp_path / "run", progress=messages)
    assert any("tokens long; the model reads only the first 16" in line for line in messages.lines)


def test_stale_temporaries_of_a_killed_run_are_removed_on_start(tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    generate(small_config(tiny_sd_dir, 2), out)
    stale = [out / "checkpoints" / ".last.pt.x1y2.tmp", out / ".report.json.abc.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    (out / ".export-zz").mkdir()
    messages = Messages()
    generate(small_config(tiny_sd_dir, 3), out, resume=True, progress=messages)
    assert not any(path.exists() for path in stale) and not (out / ".export-zz").exists()
    assert any("temporary file(s)" in line for line in messages.lines)


def test_a_model_class_in_the_scheduler_slot_is_refused(tiny_sd_dir, tmp_path):
    import shutil

    from dreamsmith.guidance.loading import load_prior

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "UNet2DConditionModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="UNet2DConditionModel in the 'scheduler' slot"):
        load_prior(folder)
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "scheduler" / "payload.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickled files \\(payload.bin\\)"):
        load_prior(folder)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        path = mount / "checkpoints" / "last.pt"
        save_checkpoint(path, {"step": 1, "weights": torch.zeros(1000)})
        with pytest.raises(RunDirError, match="cannot write the checkpoint.*previous checkpoint is kept"):
            save_checkpoint(path, {"step": 2, "weights": torch.zeros(200_000)})
        assert load_checkpoint(path)["step"] == 1
        assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
