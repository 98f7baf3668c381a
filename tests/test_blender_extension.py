"""The Blender extension under real headless Blender (the bpy 5.0.1 wheel in .venv-blender, which
`.ci/run` sets up): install the built zip, press Generate against a live `dreamsmith serve` on the
embedded prior, and check what was imported against the GLB the server wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed: pip install -e '.[server,dev]'")

import trimesh  # noqa: E402
from server_helpers import LiveServer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BLENDER_PYTHON = Path(os.environ.get("DREAMSMITH_BLENDER_PYTHON", ROOT / ".venv-blender" / "bin" / "python"))
PROMPT, STEPS = "a red cube", 20

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BLENDER_PYTHON.exists(), reason=f"no bpy environment at {BLENDER_PYTHON} "
                       "(python3.11 -m venv .venv-blender && .venv-blender/bin/pip install bpy==5.0.1)"),
]


def test_generate_in_blender_imports_the_servers_asset_z_up_in_metres(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from build_blender_extension import build

    extension = build(tmp_path / "dist")
    server = LiveServer(tmp_path / "jobs")
    render = tmp_path / "render.png"
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user"), "OMP_NUM_THREADS": "1"}
    try:
        script = ROOT / "tests" / "blender" / "generate_in_blender.py"
        arguments = [str(extension), server.url, PROMPT, str(STEPS), str(tmp_path / "result.json"), str(render)]
        run = subprocess.run([str(BLENDER_PYTHON), str(script), *arguments], capture_output=True, text=True, env=env,
                             timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        result = json.loads((tmp_path / "result.json").read_text())
        glb = tmp_path / "asset.glb"
        glb.write_bytes(server.http.get(f"/jobs/{result['job_id']}/artifacts/asset.glb").content)
    finally:
        server.stop()
    if os.environ.get("DREAMSMITH_BLENDER_RENDER"):
        shutil.copy(render, os.environ["DREAMSMITH_BLENDER_RENDER"])

    assert result["installed"] and result["enabled"]
    assert "cannot reach the dreamsmith server" in result["unreachable_report"]
    assert result["final_state"] == "succeeded" and result["error"] == "", result["final_text"]
    assert result["final_text"] == f"imported {PROMPT}" and result["collection_objects"] == [PROMPT]
    progress = [step[1] for step in result["progress"]]
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(set(progress)) >= 3
    assert any(eta > 0 for _, _, eta, _ in result["progress"])
    assert result["progress"][-1][3].endswith("final.png")

    mesh = trimesh.load(glb, force="mesh")
    assert result["triangles"] == len(mesh.faces) > 100 and result["all_triangles"]
    assert result["base_colour_image"] == [512, 512]
    assert (result["unit_system"], result["unit_scale"]) == ("METRIC", 1.0)
    low, high = mesh.bounds  # glTF: metres, +Y up, front +Z
    # Blender: +Z up; glTF's +Y becomes Blender's +Z and glTF's +Z (front) Blender's -Y.
    expected_min = [low[0], -high[2], low[1]]
    expected_max = [high[0], -low[2], high[1]]
    assert result["world_min"] == pytest.approx(expected_min, abs=1e-4)
    assert result["world_max"] == pytest.approx(expected_max, abs=1e-4)
    assert result["dimensions"] == pytest.approx([high[0] - low[0], high[2] - low[2], high[1] - low[1]], abs=1e-4)
    assert 0.2 < max(result["dimensions"]) <= 1.0  # the asset fills the unit sphere: metres, not centimetres

    assert "no texture stage yet" in result["texture_report"]
    assert "no edit stage yet" in result["edit_report"]
    assert render.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
