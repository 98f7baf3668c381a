"""export_mesh end to end: every file, placement, previews, and nothing partial on failure."""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import trimesh
from export_shapes import ball, smooth_albedo, validate_gltf
from PIL import Image
from usd_checks import usd_validation_errors

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters import pipeline
from dreamsmith.exporters.options import Material
from dreamsmith.exporters.pipeline import ExportOptions, check_options, export_mesh
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


@pytest.mark.skipif("usdz" not in FORMATS, reason="usd-core (the usd extra) is not installed")
@pytest.mark.parametrize("name", ["asset.usdz", "asset_lod1.usdz"])
def test_usd_validators_accept_the_asset_and_its_lod(exported, name):
    out, _ = exported
    assert usd_validation_errors(out / name) == []


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
    ({"texture_size": 16384}, "not a power of two between 64 and 8192"),
    ({"texture_size": 1024.0}, "--texture-size 1024.0 must be a whole number"),
    ({"texture_size": True}, "--texture-size True must be a whole number"),
    ({"max_triangles": 99}, "below the minimum of 100"),
    ({"max_triangles": float("nan")}, "--max-triangles nan must be a whole number"),
    ({"formats": ("glb", "fbx")}, "unknown export format 'fbx'"),
    ({"formats": "glb"}, "export formats 'glb' must be a list of names, e.g. ['glb']"),
    ({"lods": -1}, "must be 0 or more"),
    ({"lods": 30}, "--lods 30 is more than any mesh can use: at most 10"),
    ({"lods": 6, "max_triangles": 5000}, "--lods 6 is more than --max-triangles 5000 allows: at most 5"),
    ({"origin": "top"}, "choose center or base"),
    ({"scale": 0.0}, "positive size in metres"),
    ({"scale": -1.0}, "--scale -1.0 must be a positive size in metres from 0.001 to 10000"),
    ({"scale": float("inf")}, "--scale inf must be a positive size"),
    ({"scale": float("nan")}, "--scale nan must be a positive size"),
    ({"scale": 1e9}, "--scale 1000000000.0 must be a positive size in metres from 0.001 to 10000"),
    ({"profile": "console"}, "unknown QA profile"),
    ({"preview_resolution": 50}, "multiple of 16"),
    ({"preview_resolution": 65536}, "multiple of 16 from 32 to 2048"),
    ({"name": "../escaped"}, "export.name '../escaped' cannot be used in file names"),
    ({"name": ""}, "export.name '' cannot be used in file names"),
    ({"material": Material(roughness=float("nan"))}, "export.material.roughness nan must be a number from 0 to 1"),
    ({"material": Material(metallic=2.0)}, "export.material.metallic 2.0 must be a number from 0 to 1"),
    ({"keep_components_fraction": float("nan")}, "export.keep_components_fraction nan must be a number from 0"),
    ({"crease_angle": float("inf")}, "export.crease_angle inf must be an angle from 0 to 180 degrees"),
    ({"crease_angle": 200.0}, "export.crease_angle 200.0 must be an angle from 0 to 180 degrees"),
    ({"extras": {"guidance_scale": float("nan")}}, "export extras must be JSON values with finite numbers"),
    ({"extras": {"out": Path("/tmp")}}, "export extras must be JSON values"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(DreamsmithError, match=re.escape(message)) as raised:
        export_mesh(ball(resolution=16), smooth_albedo, tmp_path / "out", ExportOptions(**change))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_non_finite_values_in_a_subclass_of_the_options_are_refused():
    @dataclass
    class WithIsosurface(ExportOptions):
        isosurface_smoothing: float = 0.0

    check_options(WithIsosurface())
    with pytest.raises(DreamsmithError, match=r"^export.isosurface_smoothing is nan; give a finite number$"):
        check_options(WithIsosurface(isosurface_smoothing=float("nan")))


def test_lods_beyond_what_the_triangles_allow_are_not_written_and_the_qa_says_so(tmp_path):
    mesh = ball(resolution=16)  # about 1000 triangles: 3 halvings down to 100
    result = export_mesh(mesh, smooth_albedo, tmp_path, ExportOptions(texture_size=64, lods=5, preview_resolution=0))
    triangles = result.mesh.n_faces
    allowed = int(np.log2(triangles / 100))
    assert [lod["level"] for lod in result.qa["lods"]] == list(range(1, allowed + 1)) and allowed == 3
    assert {p.name for p in tmp_path.iterdir()} == {"asset.glb", "qa.json", *(f"asset_lod{k}.glb" for k in (1, 2, 3))}
    counts = [triangles] + [lod["triangles"] for lod in result.qa["lods"]]
    assert all(after < 0.6 * before for before, after in zip(counts, counts[1:], strict=False))  # no repeated level
    check = next(c for c in result.qa["asset"]["checks"] if c["check"] == "LOD levels")
    assert check == {"check": "LOD levels", "value": 3, "status": "warn",
                     "limit": f"5 asked; {triangles} triangles allow 3"}


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
