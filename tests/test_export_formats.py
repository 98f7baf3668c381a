"""The writers, checked by real clients: the Khronos glTF validator, trimesh, and USD itself."""

import json
import struct
import sys

import numpy as np
import pytest
import trimesh
from export_shapes import ball, smooth_albedo, validate_gltf
from usd_checks import usd_validation_errors

from dreamsmith import __version__
from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.bake import bake_base_color
from dreamsmith.exporters.cleanup import cleanup
from dreamsmith.exporters.decimate import decimate
from dreamsmith.exporters.gltf import Material, write_glb, write_gltf
from dreamsmith.exporters.obj import GLTF_DIELECTRIC_IOR, write_obj
from dreamsmith.exporters.usdz import usd_available, write_usdz
from dreamsmith.exporters.uv import unwrap

EXTRAS = {"prompt": "a ball of many colours", "seed": 3}


@pytest.fixture(scope="module")
def asset():
    return bake_base_color(unwrap(cleanup(decimate(cleanup(ball(resolution=32)), 1500)), 128), smooth_albedo, 128)


def glb_json(path):
    data = path.read_bytes()
    magic, version, length = struct.unpack("<III", data[:12])
    chunk_length, chunk_type = struct.unpack("<II", data[12:20])
    assert (magic, version, length, chunk_type) == (0x46546C67, 2, len(data), 0x4E4F534A)
    return json.loads(data[20 : 20 + chunk_length])


@pytest.mark.parametrize("writer, name", [(write_glb, "asset.glb"), (write_gltf, "asset.gltf")])
def test_khronos_validator_reports_no_errors_or_warnings(asset, tmp_path, writer, name):
    writer(tmp_path / name, asset, EXTRAS)
    report = validate_gltf(tmp_path / name)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    info = report["info"]
    assert info["totalTriangleCount"] == asset.n_faces and info["totalVertexCount"] == asset.n_vertices
    assert info["generator"] == f"dreamsmith {__version__}" and not info.get("extensionsRequired")
    image = info["resources"][-1]
    assert image["mimeType"] == "image/png" and image["image"]["width"] == 128 and image["image"]["transfer"] == "srgb"


def test_glb_is_core_metallic_roughness_pbr_with_normals_uvs_and_the_prompt(asset, tmp_path):
    write_glb(tmp_path / "asset.glb", asset, EXTRAS, Material(metallic=0.0, roughness=0.7))
    document = glb_json(tmp_path / "asset.glb")
    assert document["asset"]["extras"] == EXTRAS and "extensionsUsed" not in document
    primitive = document["meshes"][0]["primitives"][0]
    assert set(primitive["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    pbr = document["materials"][0]["pbrMetallicRoughness"]
    assert pbr == {"metallicFactor": 0.0, "roughnessFactor": 0.7, "baseColorTexture": {"index": 0, "texCoord": 0}}
    assert "matrix" not in document["nodes"][0] and "rotation" not in document["nodes"][0]  # no axis swap


@pytest.mark.parametrize("writer, name",
                         [(write_glb, "asset.glb"), (write_gltf, "asset.gltf"), (write_obj, "asset.obj")])
def test_trimesh_reloads_the_same_triangles_uvs_and_texture(asset, tmp_path, writer, name):
    writer(tmp_path / name, asset, EXTRAS)
    loaded = trimesh.load(tmp_path / name, force="mesh", process=False)
    assert len(loaded.faces) == asset.n_faces
    assert np.allclose(loaded.vertices[loaded.faces], asset.vertices[asset.faces], atol=1e-6)
    assert np.allclose(loaded.visual.uv[loaded.faces], asset.uvs[asset.faces], atol=1e-6)  # same v origin in all
    material = loaded.visual.material
    image = material.baseColorTexture if hasattr(material, "baseColorTexture") else material.image
    expected = np.round(asset.base_color_texture * 255)
    assert np.abs(np.asarray(image.convert("RGB"), dtype=np.float64) - expected).max() <= 1


def test_usdz_passes_usd_validators_and_holds_the_mesh_y_up_in_metres_with_its_texture(asset, tmp_path):
    pytest.importorskip("pxr", reason="usd-core (the usd extra) is not installed")
    import zipfile

    from pxr import Usd, UsdGeom

    write_usdz(tmp_path / "asset.usdz", asset, EXTRAS)
    assert usd_validation_errors(tmp_path / "asset.usdz") == []
    stage = Usd.Stage.Open(str(tmp_path / "asset.usdz"))
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/asset/asset_mesh"))
    counts = np.array(mesh.GetFaceVertexCountsAttr().Get())
    assert len(counts) == asset.n_faces and (counts == 3).all()
    assert UsdGeom.GetStageUpAxis(stage) == "Y" and UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert np.allclose(np.array(mesh.GetPointsAttr().Get()), asset.vertices)
    assert any(name.endswith("asset_basecolor.png") for name in zipfile.ZipFile(tmp_path / "asset.usdz").namelist())


def test_usdz_without_usd_core_is_a_clear_error(asset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pxr", None)  # makes `import pxr` fail
    with pytest.raises(DreamsmithError, match=r"pip install 'dreamsmith\[usd\]'"):
        write_usdz(tmp_path / "asset.usdz", asset)
    assert not (tmp_path / "asset.usdz").exists()


def test_parts_are_named_after_the_asset_in_every_format(asset, tmp_path):
    write_glb(tmp_path / "red cube-2.glb", asset, EXTRAS)
    document = glb_json(tmp_path / "red cube-2.glb")
    assert document["nodes"][0]["name"] == "red_cube_2" and document["meshes"][0]["name"] == "red_cube_2_mesh"
    assert document["materials"][0]["name"] == "red_cube_2_material"
    assert document["images"][0]["name"] == document["textures"][0]["name"] == "red_cube_2_basecolor"
    write_obj(tmp_path / "red cube-2.obj", asset, EXTRAS, Material(name="painted metal"))
    obj_text = (tmp_path / "red cube-2.obj").read_text()
    assert "\no red_cube_2\n" in obj_text and "\nusemtl painted_metal\n" in obj_text
    assert "newmtl painted_metal\n" in (tmp_path / "red cube-2.mtl").read_text()
    if usd_available():
        from pxr import Usd

        write_usdz(tmp_path / "3 red-cubes.usdz", asset, EXTRAS)
        stage = Usd.Stage.Open(str(tmp_path / "3 red-cubes.usdz"))
        assert stage.GetDefaultPrim().GetPath() == "/_3_red_cubes"
        assert {str(prim.GetPath()) for prim in stage.GetDefaultPrim().GetChildren()} == {
            "/_3_red_cubes/_3_red_cubes_mesh", "/_3_red_cubes/_3_red_cubes_material"}
        assert usd_validation_errors(tmp_path / "3 red-cubes.usdz") == []


def obj_pbr(material) -> dict:
    """The metallic-roughness values a PBR-aware reader takes from an OBJ material trimesh loaded:
    ``Pr``/``Pm``, the base colour factor from ``Kd``, and the roughness trimesh derives from ``Ns``."""
    return {"roughness": float(material.kwargs["pr"][0]), "metallic": float(material.kwargs["pm"][0]),
            "base_color_factor": np.asarray(material.diffuse, dtype=np.float64) / 255,
            "roughness_from_ns": float(material.to_pbr().roughnessFactor)}


@pytest.mark.parametrize("material", [Material(), Material(metallic=0.3, roughness=0.45)])
def test_glb_and_obj_read_back_with_the_same_material(asset, tmp_path, material):
    write_glb(tmp_path / "asset.glb", asset, EXTRAS, material)
    write_obj(tmp_path / "asset.obj", asset, EXTRAS, material)
    from_glb = trimesh.load(tmp_path / "asset.glb", force="mesh", process=False).visual.material
    from_obj = trimesh.load(tmp_path / "asset.obj", force="mesh", process=False).visual.material
    obj = obj_pbr(from_obj)
    assert from_glb.roughnessFactor == pytest.approx(material.roughness) == obj["roughness"]
    assert from_glb.metallicFactor == pytest.approx(material.metallic) == obj["metallic"]
    assert obj["roughness_from_ns"] == pytest.approx(material.roughness, abs=1e-4)  # Phong readers agree too
    glb_factor = from_glb.baseColorFactor if from_glb.baseColorFactor is not None else np.full(4, 255)
    assert np.allclose(np.asarray(glb_factor) / 255, obj["base_color_factor"])  # both white: the texture alone
    glb_texels = np.asarray(from_glb.baseColorTexture.convert("RGB"))
    obj_texels = np.asarray(from_obj.image.convert("RGB"))
    assert glb_texels.shape == (128, 128, 3) and np.array_equal(glb_texels, obj_texels)
    # glTF's dielectric reflects F0 = 0.04 (IOR 1.5); Blender reads the mean of Ks as the specular level
    # that scales F0 from Ni (0.5: unchanged): the OBJ must say the same, not Ks 0 (no specular at all).
    mtl = dict(line.split(" ", 1) for line in (tmp_path / "asset.mtl").read_text().splitlines()[1:])
    ior, level = float(mtl["Ni"]), np.mean([float(v) for v in mtl["Ks"].split()])
    assert ior == GLTF_DIELECTRIC_IOR and ((ior - 1) / (ior + 1)) ** 2 * 2 * level == pytest.approx(0.04)
    assert mtl["illum"] == "2"  # highlights on
