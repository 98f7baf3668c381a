"""Fault injection: a run killed at random steps (SIGKILL, SIGTERM, two quick SIGINTs), at random moments
that include checkpoint writes, and resumed each time, ends with weights bit-identical to an
uninterrupted run. SIGKILL loses at most one checkpoint interval; the others stop at a step boundary."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_generate import SMALL

from dreamsmith.engine.checkpoint import load_checkpoint

STEPS = 28
KILLS_PER_SIGNAL = 10
KILL_POINTS = 12  # a few spare: a run may finish before a late kill point on a fast machine
RUN = ["checkpoint_every=1", "preview_every=0", "export.preview_resolution=0", "export.texture_size=64",
       "export.isosurface_resolution=24"]


def command(model: Path, out: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "dreamsmith", "generate", "a hamburger", "--model", str(model), "--steps",
            str(STEPS), "--seed", "11", "--out", str(out), "--quiet", *(["--resume"] if resume else []), *SMALL, *RUN]


def checkpoint_step(out: Path) -> int:
    try:
        return int(load_checkpoint(out / "checkpoints" / "last.pt")["step"])
    except Exception:  # not written yet, or replaced while being read
        return -1


def final_state(out: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == STEPS
    stage = state["stage_state"]
    tensors = {f"field.{k}": v for k, v in stage["field"].items()}
    tensors |= {f"adam.{k}.{n}": v for k, s in stage["optimizer"]["state"].items() for n, v in s.items()
                if isinstance(v, torch.Tensor)}
    tensors["generator"] = state["generator_state"]
    return tensors


@pytest.fixture(scope="module")
def straight(tiny_sd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command(tiny_sd_dir, out, False), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return final_state(out)


def stop(process: subprocess.Popen, how: str) -> None:
    if how == "SIGKILL":
        process.kill()
    elif how == "SIGTERM":
        process.send_signal(signal.SIGTERM)
    else:  # two Ctrl-Cs in quick succession
        process.send_signal(signal.SIGINT)
        time.sleep(0.02)
        process.send_signal(signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT-twice"])
def test_random_kills_and_resumes_end_bit_identical_to_an_uninterrupted_run(how, straight, tiny_sd_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(f"{how}-kills")
    targets = sorted(rng.sample(range(1, STEPS - 1), KILL_POINTS))
    expected_code = {"SIGKILL": -signal.SIGKILL, "SIGTERM": 143, "SIGINT-twice": 130}[how]
    kills = 0
    for target in targets:
        start = checkpoint_step(out)
        process = subprocess.Popen(command(tiny_sd_dir, out, start >= 0), env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # wait until this process itself has written a checkpoint at or past the kill point
        while (checkpoint_step(out) <= start or checkpoint_step(out) < target) and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.03))  # anywhere in the next step or its checkpoint write
        if process.poll() is not None:
            break  # finished before this kill point
        stop(process, how)
        _, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        assert process.returncode in (expected_code, 0), (process.returncode, stderr)
        if process.returncode == expected_code:
            kills += 1
            if how != "SIGKILL":
                assert "continue with --resume" in stderr, stderr
    finished = subprocess.run(command(tiny_sd_dir, out, True), env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert kills >= KILLS_PER_SIGNAL, f"only {kills} kills landed before the run ended"
    resumed = final_state(out)
    assert resumed.keys() == straight.keys()
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name
    assert not list(out.rglob(".*.tmp")), "a temporary file was left behind"
