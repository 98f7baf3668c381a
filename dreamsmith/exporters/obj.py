"""Wavefront OBJ + MTL + PNG writer (+Y up, metres, counter-clockwise faces: the glTF frame)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from dreamsmith.exporters.gltf import GENERATOR, Material, texture_png
from dreamsmith.exporters.names import AssetNames
from dreamsmith.representations.mesh import Mesh


def _rows(prefix: str, values: np.ndarray) -> str:
    buffer = io.StringIO()
    np.savetxt(buffer, values, fmt="%.7g", delimiter=" ", header="", comments="")
    return "".join(f"{prefix} {line}\n" for line in buffer.getvalue().splitlines())


def mtl_text(material: Material, material_name: str, texture_name: str | None) -> str:
    """The MTL of the asset's one material; ``Pr``/``Pm`` are the PBR extension Blender reads."""
    lines = [f"# {GENERATOR}", f"newmtl {material_name}", "Ka 0 0 0", "Kd 1 1 1", "Ks 0 0 0", "Ns 10",
             "d 1", "illum 1", f"Pr {material.roughness:g}", f"Pm {material.metallic:g}"]
    if texture_name:
        lines.append(f"map_Kd {texture_name}")
    return "\n".join(lines) + "\n"


def write_obj(path: Path, mesh: Mesh, extras: dict | None = None, material: Material | None = None) -> list[Path]:
    """Write ``path`` (.obj), ``<stem>.mtl`` and, when textured, ``<stem>_basecolor.png``; returns the paths.

    OBJ's texture v has its origin at the bottom, as ``Mesh.uvs`` do: no flip. ``extras`` (e.g. the
    prompt) become header comments.
    """
    path = Path(path)
    material = material or Material()
    names = AssetNames.of(path.stem, material)
    mtl_path = path.with_suffix(".mtl")
    png_path = path.with_name(f"{path.stem}_basecolor.png")
    textured = mesh.uvs is not None and mesh.base_color_texture is not None
    header = [f"# {GENERATOR}"] + [f"# {key}: {' '.join(str(value).split())}" for key, value in (extras or {}).items()]
    parts = ["\n".join(header) + "\n", f"mtllib {mtl_path.name}\no {names.object}\n", _rows("v", mesh.vertices)]
    corner = mesh.faces + 1
    if textured:
        parts.append(_rows("vt", mesh.uvs))
    if mesh.vertex_normals is not None:
        parts.append(_rows("vn", mesh.vertex_normals))
    if textured and mesh.vertex_normals is not None:
        face_format = "f {0}/{0}/{0} {1}/{1}/{1} {2}/{2}/{2}\n"
    elif textured:
        face_format = "f {0}/{0} {1}/{1} {2}/{2}\n"
    elif mesh.vertex_normals is not None:
        face_format = "f {0}//{0} {1}//{1} {2}//{2}\n"
    else:
        face_format = "f {0} {1} {2}\n"
    parts.append(f"usemtl {names.material}\ns 1\n")
    parts.append("".join(face_format.format(*face) for face in corner.tolist()))
    written = [path, mtl_path]
    if textured:
        png_path.write_bytes(texture_png(mesh.base_color_texture))
        written.append(png_path)
    mtl_path.write_text(mtl_text(material, names.material, png_path.name if textured else None), encoding="utf-8")
    path.write_text("".join(parts), encoding="utf-8")
    return written
