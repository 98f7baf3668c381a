"""Face embeddings given by users (``--face-embedding FILE``): checked and read without torch.

InstantID reads the identity as one ArcFace embedding (InsightFace's antelopev2 recognition model gives 512
numbers per face). dreamsmith does not run a face detector: the embedding comes from a file the user made with
whatever tool they trust, ``.npy`` (``np.save``) or ``.safetensors`` (one tensor), shaped ``[512]`` or ``[1, 512]``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from dreamsmith.errors import DreamsmithError

ARCFACE_DIM = 512
SUFFIXES = (".npy", ".safetensors")
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def _shape_error(what: str, path: Path, shape: tuple[int, ...]) -> DreamsmithError:
    return DreamsmithError(f"{what} {path} holds an array of shape {list(shape)}; a face embedding is one "
                           f"{ARCFACE_DIM}-wide ArcFace vector ([{ARCFACE_DIM}] or [1, {ARCFACE_DIM}])")


def read_face_embedding(path: str | Path, what: str = "--face-embedding") -> np.ndarray:
    """The ``[512]`` float32 embedding in ``path``; a one-line ``DreamsmithError`` for a missing file, another
    format, a wrong size or non-finite values."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DreamsmithError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    if path.suffix not in SUFFIXES:
        raise DreamsmithError(f"{what} {path} is not a .npy or .safetensors file holding a {ARCFACE_DIM}-wide "
                              "ArcFace embedding")
    try:
        array = np.load(path, allow_pickle=False) if path.suffix == ".npy" else _read_safetensors(path, what)
    except (OSError, ValueError, EOFError) as error:
        raise DreamsmithError(f"cannot read {what} {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise DreamsmithError(f"{what} {path} does not hold a numeric array")
    if array.size != ARCFACE_DIM or array.shape not in ((ARCFACE_DIM,), (1, ARCFACE_DIM)):
        raise _shape_error(what, path, tuple(array.shape))
    array = array.reshape(ARCFACE_DIM).astype(np.float32)
    if not np.isfinite(array).all():
        raise DreamsmithError(f"{what} {path} holds NaN or infinite values")
    return array


def _read_safetensors(path: Path, what: str) -> np.ndarray:
    """The one tensor of a .safetensors file, read from its header and bytes (no torch)."""
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    tensors = {key: value for key, value in header.items() if key != "__metadata__"}
    if len(tensors) != 1:
        raise DreamsmithError(f"{what} {path} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:3])}); "
                              "a face embedding file holds exactly one")
    (entry,) = tensors.values()
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise DreamsmithError(f"{what} {path} holds {entry['dtype']} numbers; save the embedding as float32")
    start, end = entry["data_offsets"]
    return np.frombuffer(data[8 + length + start:8 + length + end], dtype=dtype).reshape(entry["shape"])
