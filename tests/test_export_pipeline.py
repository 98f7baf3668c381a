"""export_mesh end to end: every file, placement, previews, and nothing partial on failure."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from export_shapes import ball, smooth_albedo, validate_gltf
from PIL import Image

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters import pipeline
from dreamsmith.exporters.pipeline import ExportOptions, export_mesh
from dreamsmith.exporters.usdz import usd_available
from dreamsmith.representations.mesh import Mesh

FORMATS = ("glb", "gltf", "obj", "usdz") if usd_available() else ("glb", "gltf", "obj")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    options = ExportOptions(formats=FORMATS, texture_size=256, max_triangles=2000, lods=1, origin="base", scale=0.5,
                            profile="mobile", extras={"prompt": "a ball"}, preview_resolution=48)
    return out, export_mesh(ball(resolution=40), smooth_albedo, out, options)


def test_every_file_is_written_and_nothing_else(exported):
    out, result = exported
    expected = {"qa.json", "asset_turntable.gif", "asset_turntable.mp4", "asset_poster.png"}
    for stem in ("asset", "asset_lod1"):
        expected |= {f"{stem}{suffix}" for suffix in (".glb", ".gltf", ".bin", ".obj", ".mtl", "_basecolor.png")}
        expected |= {f"{stem}.usdz"} if "usdz" in FORMATS else set()
    assert {p.name for p in out.iterdir()} == expected  # no staging folder or temp file left
    assert {p.name for p in result.paths} == expected and all(p.parent == out for p in result.paths)


def test_budget_lod_and_qa_report(exported):
    out, result = exported
    qa = json.loads((out / "qa.json").read_text())
    assert qa["asset"]["metrics"]["triangles"] == result.mesh.n_faces
    assert abs(result.mesh.n_faces - 2000) <= 100
    assert qa["lods"][0]["triangles"] / result.mesh.n_faces == pytest.approx(0.5, abs=0.03)
    assert qa["lods"][0]["texture_size"] == 128
    assert qa["asset"]["status"] == "pass", [c for c in qa["asset"]["checks"] if c["status"] != "pass"]
    assert set(result.timings) >= {"cleanup", "decimate", "unwrap", "bake", "write", "qa", "lods", "previews"}


@pytest.mark.parametrize("name", ["asset.glb", "asset_lod1.glb"])
def test_validator_accepts_the_asset_and_its_lod(exported, name):
    out, _ = exported
    report = validate_gltf(out / name)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]["messages"]


def test_every_format_reloads_placed_on_the_ground_with_the_asked_size(exported):
    out, result = exported
    for name in ("asset.glb", "asset.gltf", "asset.obj"):
        loaded = trimesh.load(out / name, force="mesh", process=False)
        assert len(loaded.faces) == result.mesh.n_faces
        low, high = loaded.bounds
        assert low[1] == pytest.approx(0.0, abs=1e-6)  # origin=base: resting on y = 0
        assert (low + high)[[0, 2]] == pytest.approx([0.0, 0.0], abs=1e-6)
        assert (high - low).max() == pytest.approx(0.5, abs=1e-6)  # scale: longest side in metres


def test_previews_show_the_object_turning(exported):
    out, _ = exported
    gif = iio.imread(out / "asset_turntable.gif")
    mp4 = iio.imread(out / "asset_turntable.mp4", plugin="FFMPEG")
    assert gif.shape[:3] == (36, 48, 48) and mp4.shape[:3] == (36, 48, 48)
    poster = np.asarray(Image.open(out / "asset_poster.png").convert("RGB"), dtype=np.float64) / 255
    assert poster.shape == (96, 96, 3)
    foreground = (poster < 0.97).any(-1)
    assert 0.3 < foreground.mean() < 0.9 and foreground[48, 48]  # the ball fills the middle of the frame


def test_a_failure_leaves_the_previous_asset_and_no_partial_files(tmp_path, monkeypatch):
    (tmp_path / "asset.glb").write_bytes(b"previous asset")

    def broken_writer(path, mesh, extras, material):
        path.write_text("half an OBJ")
        raise OSError("disk full")

    monkeypatch.setitem(pipeline.WRITERS, "obj", (".obj", broken_writer))
    with pytest.raises(DreamsmithError, match="failed: disk full; nothing was changed"):
        export_mesh(ball(resolution=24), smooth_albedo, tmp_path,
                    ExportOptions(formats=("glb", "obj"), texture_size=64, preview_resolution=0))
    assert [p.name for p in tmp_path.iterdir()] == ["asset.glb"]
    assert (tmp_path / "asset.glb").read_bytes() == b"previous asset"


@pytest.mark.parametrize("change, message", [
    ({"texture_size": 1000}, "not a power of two"),
    ({"texture_size": 32}, "not a power of two between 64"),
    ({"max_triangles": 99}, "below the minimum of 100"),
    ({"formats": ("glb", "fbx")}, "unknown export format 'fbx'"),
    ({"lods": -1}, "must be 0 or more"),
    ({"origin": "top"}, "choose center or base"),
    ({"scale": 0.0}, "positive size in metres"),
    ({"profile": "console"}, "unknown QA profile"),
    ({"preview_resolution": 50}, "multiple of 16"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(DreamsmithError, match=message):
        export_mesh(ball(resolution=16), smooth_albedo, tmp_path / "out", ExportOptions(**change))
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DreamsmithError, match="cannot write to .*choose another --out"):
        export_mesh(ball(resolution=16), smooth_albedo, tmp_path / "file" / "out", ExportOptions())


def test_unwrap_caps_chart_area_cutting_more_seams_without_overlapping_uvs():
    from dreamsmith.exporters.bake import uv_coverage
    from dreamsmith.exporters.uv import unwrap

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)  # 5120 faces, one component
    mesh = Mesh(np.asarray(sphere.vertices, dtype=np.float64), np.asarray(sphere.faces, dtype=np.int64))
    capped = unwrap(mesh, 512, chart_faces=256)
    unbounded = unwrap(mesh, 512, chart_faces=0)
    charts = [len(np.unique(m.vertices, axis=0)) for m in (capped, unbounded)]  # split seam vertices
    assert capped.n_vertices > unbounded.n_vertices  # more seams: more split vertices
    assert charts[0] == charts[1] == mesh.n_vertices  # the same surface, only cut differently
    assert uv_coverage(capped.uvs, capped.faces, 512).max() <= 1  # no two triangles share a texel centre
