"""glTF 2.0 writers (GLB and .gltf + .bin + PNG) with core metallic-roughness PBR.

The asset is in glTF's own frame (+Y up, metres, front +Z): no axis swap, no node transform. Only core
features are used (no extensions), so every conforming viewer and engine loads the file.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dreamsmith import __version__
from dreamsmith.exporters.names import AssetNames
from dreamsmith.exporters.options import Material
from dreamsmith.representations.mesh import Mesh

GENERATOR = f"dreamsmith {__version__}"

_FLOAT, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071
_GLB_MAGIC, _JSON_CHUNK, _BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942


def texture_png(texture: np.ndarray) -> bytes:
    """PNG bytes of a float ``[H, W, 3]`` sRGB texture in [0, 1] (8 bit)."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(texture, 0.0, 1.0) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def srgb_to_linear(color: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (glTF vertex colours are linear)."""
    return np.where(color <= 0.04045, color / 12.92, ((color + 0.055) / 1.055) ** 2.4)


class _Buffer:
    """One binary buffer growing by 4-byte-aligned views (glTF requires aligned accessors)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict[str, Any]] = []

    def add(self, payload: bytes, target: int | None = None) -> int:
        self.data += b"\0" * (-len(self.data) % 4)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": len(payload)}
        if target is not None:
            view["target"] = target
        self.data += payload
        self.views.append(view)
        return len(self.views) - 1


def gltf_document(mesh: Mesh, extras: dict[str, Any] | None = None, material: Material | None = None,
                  image_uri: str | None = None, stem: str = "asset") -> tuple[dict[str, Any], bytes, bytes | None]:
    """The glTF JSON, its binary buffer and the base-colour PNG of ``mesh``.

    The PNG goes into the buffer (GLB) unless ``image_uri`` names an external file (.gltf). Writes
    POSITION, NORMAL, TEXCOORD_0 (v flipped to glTF's top-left origin) and, for an untextured mesh with
    vertex colours, COLOR_0 (linear). ``extras`` (prompt, preset, seed) go in ``asset.extras``; the
    node, mesh, material, texture and image are named after the file's ``stem``.
    """
    material = material or Material()
    names = AssetNames.of(stem, material)
    buffer = _Buffer()
    accessors: list[dict[str, Any]] = []

    def accessor(array: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        entry = {"bufferView": buffer.add(array.tobytes(), target), "componentType": component,
                 "count": int(array.shape[0]), "type": kind}
        if bounds:
            entry["min"] = array.min(axis=0).astype(float).tolist()
            entry["max"] = array.max(axis=0).astype(float).tolist()
        accessors.append(entry)
        return len(accessors) - 1

    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    attributes = {"POSITION": accessor(vertices, "VEC3", _FLOAT, _ARRAY_BUFFER, bounds=True)}
    if mesh.vertex_normals is not None:
        length = np.linalg.norm(mesh.vertex_normals, axis=-1, keepdims=True)
        normals = np.where(length > 1e-12, mesh.vertex_normals / np.maximum(length, 1e-12), [0.0, 1.0, 0.0])
        attributes["NORMAL"] = accessor(normals.astype(np.float32), "VEC3", _FLOAT, _ARRAY_BUFFER)
    textured = mesh.uvs is not None and mesh.base_color_texture is not None
    if textured:
        texcoord = np.stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]], axis=-1).astype(np.float32)
        attributes["TEXCOORD_0"] = accessor(texcoord, "VEC2", _FLOAT, _ARRAY_BUFFER)
    elif mesh.vertex_colors is not None:
        linear = srgb_to_linear(np.clip(mesh.vertex_colors, 0.0, 1.0)).astype(np.float32)
        attributes["COLOR_0"] = accessor(linear, "VEC3", _FLOAT, _ARRAY_BUFFER)
    small = mesh.n_vertices <= 65535
    indices = mesh.faces.reshape(-1).astype(np.uint16 if small else np.uint32)
    index_accessor = accessor(indices, "SCALAR", _UNSIGNED_SHORT if small else _UNSIGNED_INT, _ELEMENT_ARRAY_BUFFER)

    pbr: dict[str, Any] = {"metallicFactor": float(material.metallic), "roughnessFactor": float(material.roughness)}
    document: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": GENERATOR, **({"extras": extras} if extras else {})},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": names.object}],
        "meshes": [{"name": names.mesh, "primitives": [
            {"attributes": attributes, "indices": index_accessor, "material": 0, "mode": 4}]}],
        "materials": [{"name": names.material, "pbrMetallicRoughness": pbr, "doubleSided": False}],
        "accessors": accessors,
    }
    png = None
    if textured:
        png = texture_png(mesh.base_color_texture)
        image = {"uri": image_uri} if image_uri else {"bufferView": buffer.add(png), "mimeType": "image/png"}
        document["images"] = [{"name": names.image, **image}]
        document["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                                 "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}]
        document["textures"] = [{"name": names.image, "sampler": 0, "source": 0}]
        pbr["baseColorTexture"] = {"index": 0, "texCoord": 0}
    buffer.data += b"\0" * (-len(buffer.data) % 4)
    document["bufferViews"] = buffer.views
    document["buffers"] = [{"byteLength": len(buffer.data)}]
    return document, bytes(buffer.data), png


def glb_bytes(mesh: Mesh, extras: dict[str, Any] | None = None, material: Material | None = None,
              stem: str = "asset") -> bytes:
    """The binary glTF (GLB) of ``mesh``: header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
    document, binary, _ = gltf_document(mesh, extras, material, stem=stem)
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([
        struct.pack("<III", _GLB_MAGIC, 2, total),
        struct.pack("<II", len(text), _JSON_CHUNK), text,
        struct.pack("<II", len(binary), _BIN_CHUNK), binary,
    ])


def write_glb(path: Path, mesh: Mesh, extras: dict[str, Any] | None = None,
              material: Material | None = None) -> list[Path]:
    """Write ``mesh`` as one GLB file at ``path``; returns ``[path]``."""
    path = Path(path)
    path.write_bytes(glb_bytes(mesh, extras, material, path.stem))
    return [path]


def write_gltf(path: Path, mesh: Mesh, extras: dict[str, Any] | None = None,
               material: Material | None = None) -> list[Path]:
    """Write ``mesh`` as ``path`` (.gltf JSON) + ``<stem>.bin`` + ``<stem>_basecolor.png``; returns the paths."""
    path = Path(path)
    bin_path = path.with_suffix(".bin")
    png_path = path.with_name(f"{path.stem}_basecolor.png")
    textured = mesh.uvs is not None and mesh.base_color_texture is not None
    document, binary, png = gltf_document(mesh, extras, material, image_uri=png_path.name if textured else None,
                                          stem=path.stem)
    document["buffers"][0]["uri"] = bin_path.name
    bin_path.write_bytes(binary)
    written = [path, bin_path]
    if png is not None:
        png_path.write_bytes(png)
        written.append(png_path)
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return written
