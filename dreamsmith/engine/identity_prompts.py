"""Identity prompts given as options (``--instantid`` with ``--face-embedding``, ``--photomaker`` with
``--id-image``): resolved and checked without torch, turned into ``guidance.conditioners`` entries.

Where the adapter is a .safetensors file its header says the text width it was made for, checked here against
the base model's ``unet/config.json`` (SD 1.5 attends to 768-wide text, SDXL to 2048); pickled ``.bin`` files
are checked when the stage loads them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from dreamsmith.engine.presets import resolve_model
from dreamsmith.errors import DreamsmithError
from dreamsmith.image_files import check_image

INSTANTID_WIDTH_KEY = "image_proj.proj_out.weight"
PHOTOMAKER_WIDTH_KEY = "id_encoder.fuse_module.layer_norm.weight"
ADAPTER_FILE = "ip-adapter.bin"


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """``{key: shape}`` from a .safetensors file's header (no tensor is read)."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as error:
        raise DreamsmithError(f"{path} is not a readable .safetensors file ({error})") from None
    return {key: value["shape"] for key, value in header.items() if key != "__metadata__"}


def model_text_width(model: str | None) -> int | None:
    """The cross-attention width in the model folder's ``unet/config.json`` (None when it cannot be read here)."""
    try:
        config = json.loads((Path(resolve_model(model or "embedded:toyworld")) / "unet" / "config.json").read_text())
        return int(config["cross_attention_dim"])
    except (OSError, ValueError, KeyError, TypeError, DreamsmithError):
        return None


def check_width(file: Path, key: str, row: int, what: str, model: str | None) -> None:
    """A .safetensors adapter whose ``key`` has ``shape[row]`` ≠ the model's text width is refused in one line."""
    if file.suffix != ".safetensors":
        return
    shape = safetensors_shapes(file).get(key)
    if shape is None:
        raise DreamsmithError(f"{what} {file} has no {key}: it is not in the published layout")
    width = model_text_width(model)
    if width is not None and shape[row] != width:
        raise DreamsmithError(f"{what} {file} is for another base model: it writes {shape[row]}-wide text tokens, "
                              f"{model or 'the model'} attends to {width} (SD 1.5: 768, SDXL: 2048)")


def instantid_spec(adapter: str, face_embedding: Path | None, scale: float, model: str | None) -> dict[str, Any]:
    """The ``instantid`` conditioner entry of ``--instantid PATH --face-embedding FILE --id-scale S``."""
    if face_embedding is None:
        raise DreamsmithError("--instantid needs --face-embedding FILE: a 512-wide ArcFace embedding (.npy or "
                              ".safetensors)")
    if scale < 0:
        raise DreamsmithError(f"--id-scale must be >= 0, got {scale}")
    from dreamsmith.face_embedding import read_face_embedding  # numpy: not loaded for a usage error

    read_face_embedding(face_embedding)
    path = Path(resolve_model(adapter)).expanduser()
    file = path / ADAPTER_FILE if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        file = next(iter(sorted(path.glob("*.safetensors"))), file)
    if not file.is_file():
        raise DreamsmithError(f"--instantid {path} does not exist; pass InstantX/InstantID's ip-adapter.bin (its "
                              "ControlNetModel/ beside it) or their folder")
    check_width(file, INSTANTID_WIDTH_KEY, 0, "--instantid", model)
    return {"name": "instantid", "path": str(file.resolve()), "face_embedding": str(face_embedding.resolve()),
            "scale": scale, "controlnet_scale": scale}


def photomaker_spec(checkpoint: Path, images: list[Path], prompt: str, model: str | None) -> dict[str, Any]:
    """The ``photomaker`` conditioner entry of ``--photomaker FILE --id-image IMG ...`` for ``prompt``."""
    from dreamsmith.prompt_words import has_trigger

    if not images:
        raise DreamsmithError("--photomaker needs --id-image IMG (repeatable): photos of the person")
    checked = [str(check_image(image, "--id-image").resolve()) for image in images]
    checkpoint = checkpoint.expanduser()
    if not checkpoint.is_file():
        raise DreamsmithError(f"--photomaker {checkpoint} does not exist; pass photomaker-v1.bin or a .safetensors")
    if not has_trigger(prompt, "img"):
        raise DreamsmithError("--photomaker needs the trigger word 'img' after the class word in the prompt, e.g. "
                              "\"a photo of a man img\"")
    check_width(checkpoint, PHOTOMAKER_WIDTH_KEY, 0, "--photomaker", model)
    return {"name": "photomaker", "path": str(checkpoint.resolve()), "images": checked}
