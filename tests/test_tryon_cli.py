"""`dreamsmith tryon` through the CLI: a striped garment on the toy capsule's upper half, scored; resume; and
one-line refusals that leave the source mesh untouched."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from dreamsmith.engine.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from test_generate import assert_clean_failure, run_cli  # noqa: E402
from tryon_score import capsule, score, striped_garment  # noqa: E402

SMALL = ["--texture-size", "128", "--set", "camera.batch_size=1", "--set", "camera.eval_views=4",
         "--set", "camera.eval_resolution=32", "--set", "export.preview_resolution=48", "--set", "preview_every=2",
         "--set", "checkpoint_every=2"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_tryon_dresses_the_capsules_upper_half_and_resumes(tmp_path):
    source = capsule(tmp_path / "capsule.glb", 40)
    garment = striped_garment(tmp_path / "stripes.png")
    before = sha(tmp_path / "capsule.glb")
    out = tmp_path / "run"
    common = [str(tmp_path / "capsule.glb"), str(tmp_path / "stripes.png"), "--region", "upper", "--out", str(out),
              "--seed", "1", *SMALL]
    result = run_cli("tryon", *common, "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert "has no UVs: unwrapped" in result.stderr  # the capsule is written without UVs
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    result = run_cli("tryon", *common, "--steps", "4", "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from_step"] == 2 and report["stages"][0]["steps"] == 4
    scores = score(out / "asset.glb", source, garment)
    assert scores["garment_error"] <= 0.08 and scores["body_error"] <= 0.03, scores
    record = json.loads((out / "edit.json").read_text())
    assert record["kind"] == "tryon" and record["garments"][0]["region"] == "upper"
    counts = json.loads((out / "tryon.json").read_text())
    assert counts["seen"] == counts["texels"] and 0.3 < counts["dressed"] / counts["texels"] < 0.7
    assert (out / "previews" / "tryon_views.png").is_file() and (out / "asset_poster.png").is_file()
    assert sha(tmp_path / "capsule.glb") == before
    asset = trimesh.load(out / "asset.glb", force="mesh", process=False)
    assert np.allclose(np.sort(np.unique(asset.vertices, axis=0), 0), np.sort(np.unique(source.vertices, axis=0), 0),
                       atol=1e-6)


@pytest.mark.slow
def test_two_garments_each_dress_their_own_region(tmp_path):
    source = capsule(tmp_path / "capsule.glb", 24)
    garment = striped_garment(tmp_path / "stripes.png")
    blue = (26, 51, 204, 255)
    Image.new("RGBA", (16, 16), blue).save(tmp_path / "blue.png")
    out = tmp_path / "run"
    result = run_cli("tryon", str(tmp_path / "capsule.glb"), str(tmp_path / "stripes.png"), str(tmp_path / "blue.png"),
                     "--region", "upper", "--region", "lower", "--steps", "1", "--out", str(out), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "edit.json").read_text())
    assert [g["region"] for g in record["garments"]] == ["upper", "lower"]
    recoloured = source.copy()
    recoloured.visual.vertex_colors = np.tile(np.array(blue, np.uint8), (len(source.vertices), 1))
    scores = score(out / "asset.glb", recoloured, garment)  # body_error: the lower half against the blue garment
    assert scores["garment_error"] <= 0.08 and scores["body_error"] <= 0.08, scores


def test_tryon_refuses_bad_input_in_one_line_and_leaves_the_mesh_untouched(tmp_path):
    capsule(tmp_path / "capsule.glb", 24)
    striped_garment(tmp_path / "stripes.png")
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "opaque.png")
    Image.new("RGBA", (16, 16), (200, 0, 0, 0)).save(tmp_path / "blank.png")
    (tmp_path / "notes.png").write_text("not an image")
    mesh, stripes = str(tmp_path / "capsule.glb"), str(tmp_path / "stripes.png")
    before = sha(tmp_path / "capsule.glb")
    out = tmp_path / "run"
    cases = [
        ((mesh, str(tmp_path / "opaque.png")), "has no alpha channel"),
        ((mesh, str(tmp_path / "blank.png")), "blank alpha channel"),
        ((mesh, str(tmp_path / "notes.png")), "is not a readable image"),
        ((mesh, str(tmp_path / "missing.png")), "does not exist"),
        ((mesh, stripes, "--region", "y>5"), "covers no triangle"),
        ((mesh, stripes, "--region", "y>>5"), "cannot read 'y>>5'"),
        ((mesh, stripes, stripes, "--region", "upper"), "two garments cannot share one region"),
        ((mesh, stripes, stripes, "--region", "upper", "--region", "upper"), "two garments for one region"),
        ((mesh, stripes, "--model", "nothing"), "unknown try-on model"),
        ((str(tmp_path / "missing.glb"), stripes), "does not exist"),
    ]
    for args, needle in cases:
        result = run_cli("tryon", *args, "--out", str(out))
        assert_clean_failure(result, needle)
        assert not out.exists(), args
    assert sha(tmp_path / "capsule.glb") == before


def test_doctor_names_the_try_on_models_non_commercial_licences():
    from dreamsmith.engine.backends import backend_report

    row = next(row for row in backend_report() if row[0].startswith("try-on"))
    assert "idm-vton" in row[1] and "non-commercial" in row[2] and "CC BY-NC-SA 4.0" in row[2]
