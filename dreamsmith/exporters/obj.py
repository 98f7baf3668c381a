"""Wavefront OBJ + MTL + PNG writer (+Y up, metres, counter-clockwise faces: the glTF frame)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from dreamsmith.exporters.gltf import GENERATOR, Material, texture_png
from dreamsmith.exporters.names import AssetNames
from dreamsmith.representations.mesh import Mesh

GLTF_DIELECTRIC_IOR = 1.5
"""glTF's core metallic-roughness material is a dielectric of index 1.5 (F0 = 0.04) where not metallic."""
SPECULAR_LEVEL = 0.5
"""Ks that keeps that dielectric reflectance in Blender's reader and writer, which take the mean of Ks
as the Principled BSDF's "Specular IOR Level" (0.5: F0 from the IOR unchanged; 0 removes all specular)."""
MAX_SPECULAR_EXPONENT = 1000.0


def _rows(prefix: str, values: np.ndarray) -> str:
    buffer = io.StringIO()
    np.savetxt(buffer, values, fmt="%.7g", delimiter=" ", header="", comments="")
    return "".join(f"{prefix} {line}\n" for line in buffer.getvalue().splitlines())


def specular_exponent(roughness: float) -> float:
    """Phong exponent ``Ns`` of a perceptual ``roughness`` for readers without ``Pr``: Blinn-Phong's
    exponent of a Beckmann lobe of width alpha = roughness², ``2 / alpha² - 2`` (Walter et al. 2007,
    "Microfacet models for refraction"), capped at MTL's customary 1000; trimesh inverts exactly this."""
    alpha_squared = max(roughness, 1e-3) ** 4
    return min(2.0 / alpha_squared - 2.0, MAX_SPECULAR_EXPONENT)


def mtl_text(material: Material, material_name: str, texture_name: str | None) -> str:
    """The MTL of the asset's one material, matching the glTF's metallic-roughness PBR material.

    ``Pr``/``Pm`` (the PBR extension Blender and others read) carry roughness and metalness exactly;
    ``Ks``, ``Ni`` and ``illum 2`` (highlights on) keep glTF's dielectric specular; ``Ns`` approximates
    the roughness for Phong readers; ``Kd 1 1 1`` leaves the base colour to the texture, as glTF's
    factor of 1 does; no ambient (``Ka 0 0 0``), which glTF does not have.
    """
    metallic, roughness = float(material.metallic), float(material.roughness)
    lines = [f"# {GENERATOR}", f"newmtl {material_name}", "Ka 0 0 0", "Kd 1 1 1",
             f"Ks {SPECULAR_LEVEL:g} {SPECULAR_LEVEL:g} {SPECULAR_LEVEL:g}", f"Ns {specular_exponent(roughness):.6g}",
             f"Ni {GLTF_DIELECTRIC_IOR:g}", "d 1", "illum 2", f"Pr {roughness:g}", f"Pm {metallic:g}"]
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
