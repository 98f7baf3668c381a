"""benchmarks/edit_score.py's plumbing on the tiny models: a p2p edit of a given source scored against the toy world,
a rerun that skips finished edits, and a missing editing model refused before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import SMALL  # noqa: E402

from dreamsmith.engine.overrides import make_config  # noqa: E402
from dreamsmith.engine.presets import embedded_model_path  # noqa: E402
from dreamsmith.engine.run import generate  # noqa: E402

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "edit_score.py"


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def red_cube(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("source") / "red-cube"
    generate(make_config("a red cube", model=str(tiny_sd_dir), steps=2, seed=4, overrides=SMALL), out)
    return out


def test_p2p_edits_of_a_given_source_are_scored_and_a_rerun_skips_them(red_cube, tmp_path):
    out = tmp_path / "bench"
    args = ["--source", str(red_cube), "--methods", "p2p", "--steps", "2", "--out", str(out),
            *[item for override in SMALL for item in ("--set", override)]]
    result = run_script(*args)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {row["task"]: row for row in report["runs"]}
    assert set(rows) == {"blue", "sphere"} and not any(row["skipped"] for row in rows.values())
    assert rows["blue"]["prompt"] == "a blue cube" and rows["sphere"]["prompt"] == "a red sphere"
    assert rows["blue"]["caption"] == "a blue cube" and rows["sphere"]["caption"] == "a red sphere"
    for row in rows.values():
        assert 0 <= row["iou_to_source"] <= 1 and 0 <= row["colour_error"] <= 1 and row["steps"] == 2
    config = (out / "p2p-blue" / "config.yaml").read_text()
    assert "name: p2p" in config and "source_prompt: a red cube" in config
    p2p = report["table"]["p2p"]
    source_volume = report["source_score"]["volume_iou"]
    assert p2p["blue_volume_iou_ratio"] == pytest.approx(rows["blue"]["volume_iou"] / max(source_volume, 1e-9),
                                                         abs=1e-4)
    assert set(p2p["meets"]) == {"blue_colour_error", "blue_volume_iou_ratio", "blue_iou_to_source", "sphere_iou"}
    assert (out / "edit_score.json").is_file() and (out / "edit_score.png").is_file()

    stamp = (out / "p2p-blue" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run_script(*args)
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert all(row["skipped"] for row in rerun["runs"]) and rerun["table"] == {**report["table"]}
    assert (out / "p2p-blue" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_a_missing_editing_model_is_refused_before_any_work(tmp_path):
    out = tmp_path / "bench"
    result = run_script("--methods", "in2n", "--model", str(tmp_path / "nowhere"), "--out", str(out))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and "or run --methods p2p alone" in result.stderr
    assert not out.exists()
    if not embedded_model_path("toyworld-ip2p").is_dir():  # until the embedded editing model ships
        result = run_script("--out", str(out))
        assert result.returncode != 0 and "'toyworld-ip2p' is not shipped" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
