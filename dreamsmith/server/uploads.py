"""Uploaded meshes: read within a size limit, and checked to be what they claim (binary glTF 2.0)."""

from __future__ import annotations

import json
import struct

from dreamsmith.errors import DreamsmithError

GLB_TYPES = ("model/gltf-binary", "application/octet-stream")
_JSON_CHUNK = 0x4E4F534A


class UploadError(DreamsmithError):
    """An upload that is too large, of the wrong type or damaged; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_glb(data: bytes) -> dict[str, int]:
    """Check ``data`` is a well-formed GLB 2.0 holding at least one mesh; returns its counts.

    Layout (glTF 2.0 spec, "Binary glTF Layout"): a 12-byte header (magic ``glTF``, version 2, total
    length), then chunks of (length, type, data), the first one JSON."""
    if len(data) < 20 or data[:4] != b"glTF":
        raise UploadError("the upload is not a binary glTF (.glb) file: export the mesh as GLB", 415)
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise UploadError(f"the GLB is glTF version {version}; only glTF 2.0 is read")
    if length != len(data):
        raise UploadError(f"the GLB header says {length} bytes but {len(data)} arrived: the file is truncated")
    chunk_length, chunk_type = struct.unpack_from("<II", data, 12)
    if chunk_type != _JSON_CHUNK or 20 + chunk_length > len(data):
        raise UploadError("the GLB's first chunk is not its JSON: the file is damaged")
    try:
        document = json.loads(data[20:20 + chunk_length])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UploadError("the GLB's JSON chunk does not parse: the file is damaged") from None
    if not isinstance(document, dict) or not isinstance(document.get("asset"), dict):
        raise UploadError("the GLB has no 'asset' object: it is not glTF")
    meshes = document.get("meshes")
    if not isinstance(meshes, list) or not meshes:
        raise UploadError("the GLB holds no mesh: select a mesh object before texturing")
    return {"bytes": len(data), "meshes": len(meshes)}
