"""USDZ writer through Pixar's ``usd-core`` (the optional ``usd`` extra): a UsdGeom mesh with a
UsdPreviewSurface material, Y up, metres, packaged with its base-colour PNG."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.gltf import GENERATOR, Material, texture_png
from dreamsmith.exporters.names import AssetNames
from dreamsmith.representations.mesh import Mesh


def _pxr() -> Any:
    try:
        from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt
    except ImportError:
        raise DreamsmithError(
            "USDZ export needs usd-core: pip install 'dreamsmith[usd]' (or leave usdz out of --format)"
        ) from None
    return Gf, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt


def usd_available() -> bool:
    """Whether ``usd-core`` can be imported."""
    try:
        _pxr()
    except DreamsmithError:
        return False
    return True


def write_usdz(path: Path, mesh: Mesh, extras: dict | None = None, material: Material | None = None) -> list[Path]:
    """Write ``mesh`` as a USDZ package at ``path``; returns ``[path]``.

    USD's default orientation (right-handed: counter-clockwise front faces) and ``upAxis = Y``,
    ``metersPerUnit = 1`` match the mesh's frame. ``extras`` go in the layer's custom data. The root
    prim (the default prim), its mesh and material are named after the file's stem.
    """
    Gf, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt = _pxr()
    path = Path(path)
    material = material or Material()
    names = AssetNames.of(path.stem, material)
    textured = mesh.uvs is not None and mesh.base_color_texture is not None
    with tempfile.TemporaryDirectory(prefix="dreamsmith-usd-") as folder:
        layer_path = Path(folder) / f"{path.stem}.usdc"
        texture_name = f"{path.stem}_basecolor.png"
        stage = Usd.Stage.CreateNew(str(layer_path))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, 1.0)
        metadata = {key: str(value) for key, value in (extras or {}).items()}
        stage.GetRootLayer().customLayerData = {"generator": GENERATOR, **metadata}
        root = UsdGeom.Xform.Define(stage, f"/{names.object}")
        stage.SetDefaultPrim(root.GetPrim())
        material_path = root.GetPath().AppendChild(names.material)

        geometry = UsdGeom.Mesh.Define(stage, root.GetPath().AppendChild(names.mesh))
        geometry.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(mesh.vertices))
        geometry.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(mesh.n_faces, 3, dtype=np.int32)))
        geometry.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(mesh.faces.reshape(-1).astype(np.int32)))
        geometry.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        geometry.CreateExtentAttr([Gf.Vec3f(*map(float, corner)) for corner in mesh.bounds()])
        if mesh.vertex_normals is not None:
            geometry.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(mesh.vertex_normals))
            geometry.SetNormalsInterpolation(UsdGeom.Tokens.vertex)

        shader_material = UsdShade.Material.Define(stage, material_path)
        surface = UsdShade.Shader.Define(stage, material_path.AppendChild("surface"))
        surface.CreateIdAttr("UsdPreviewSurface")
        surface.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(float(material.metallic))
        surface.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(float(material.roughness))
        shader_material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        if textured:
            primvars = UsdGeom.PrimvarsAPI(geometry)
            st = primvars.CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
            st.Set(Vt.Vec2fArray.FromNumpy(mesh.uvs))
            reader = UsdShade.Shader.Define(stage, material_path.AppendChild("st_reader"))
            reader.CreateIdAttr("UsdPrimvarReader_float2")
            reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")  # a string in UsdPreviewSurface's spec
            texture = UsdShade.Shader.Define(stage, material_path.AppendChild(names.image))
            texture.CreateIdAttr("UsdUVTexture")
            texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(texture_name)
            texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
            texture.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
            texture.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
            texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader.ConnectableAPI(), "result")
            texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
            surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
                texture.ConnectableAPI(), "rgb")
            (Path(folder) / texture_name).write_bytes(texture_png(mesh.base_color_texture))
        else:
            surface.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(0.8, 0.8, 0.8))
        UsdShade.MaterialBindingAPI.Apply(geometry.GetPrim()).Bind(shader_material)
        stage.GetRootLayer().Save()
        if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer_path)), str(path)):
            raise DreamsmithError(f"usd-core could not package {path.name}")
    return [path]
