"""Image prompts and style references given as options (``--image``, ``--style-reference``, a batch row's
``style_reference``) or inside the prompt (``"a <image:REF.png>"``): resolved and checked without torch, turned
into ``guidance.conditioners`` entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dreamsmith.engine.presets import EMBEDDED_PREFIX, resolve_model
from dreamsmith.errors import DreamsmithError
from dreamsmith.image_files import check_image
from dreamsmith.prompt_images import check_prompt_images, has_images
from dreamsmith.regions import parse_subject

EMBEDDED_ADAPTERS = {"embedded:toyworld": "embedded:toyworld-ip"}
"""The image adapter shipped for each embedded model (used when ``--image`` comes without ``--ip-adapter``)."""
ALIGNER_FOLDER = "aligner"
"""The multimodal-prompt aligner's folder inside an image adapter or model folder (``image_encoder/`` beside it)."""
RUN_REFERENCE = "asset_poster.png"
"""The image of a finished run a style reference reads (written by `dreamsmith export`)."""


def image_prompt_spec(image: Path, scale: float, adapter: str | None, model: str | None) -> dict[str, Any]:
    """The ``ip_adapter`` conditioner entry of ``--image IMAGE --image-scale S [--ip-adapter PATH]``."""
    if scale < 0:
        raise DreamsmithError(f"--image-scale must be >= 0, got {scale}")
    image = check_image(image, "--image")
    if adapter is None:
        adapter = EMBEDDED_ADAPTERS.get(model or "embedded:toyworld")
        if adapter is None:
            raise DreamsmithError(f"--image needs --ip-adapter with an IP-Adapter for {model} (e.g. h94/IP-Adapter's "
                                  "models/ip-adapter_sd15.safetensors for Stable Diffusion 1.5)")
        if not Path(resolve_model(adapter)).is_dir():
            name = adapter.removeprefix(EMBEDDED_PREFIX)
            raise DreamsmithError(f"the embedded image adapter '{name}' is not shipped with this version of dreamsmith "
                                  "(tools/train_toyworld_ip.py trains it); pass "
                                  "--ip-adapter with an adapter")
    path = Path(resolve_model(adapter)).expanduser()
    if not path.exists():
        raise DreamsmithError(f"--ip-adapter {path} does not exist; pass an ip-adapter .safetensors file or its folder")
    return {"name": "ip_adapter", "path": str(path.resolve()), "image": str(image.resolve()), "scale": scale}


def subject_spec(subjects: list[str], scale: float, adapter: str | None) -> dict[str, Any]:
    """The ``multi_subject`` conditioner entry of ``--subject "EXPRESSION: IMAGE[=PHRASE]" ... --subject-scale S
    --ms-adapter PATH``: each box inside the scene, each image readable (its path made absolute)."""
    if scale < 0:
        raise DreamsmithError(f"--subject-scale must be >= 0, got {scale}")
    entries = []
    for text in subjects:
        subject = parse_subject(text)
        image = check_image(subject.image, "--subject image").resolve()
        entries.append(f"{subject.expression}: {image}" + (f"={subject.phrase}" if subject.phrase else ""))
    if adapter is None:
        raise DreamsmithError("--subject needs --ms-adapter with an MS-Diffusion checkpoint (doge1516/MS-Diffusion's "
                              "ms_adapter.bin, for Stable Diffusion XL)")
    path = Path(adapter).expanduser()
    if not path.exists():
        raise DreamsmithError(f"--ms-adapter {path} does not exist; pass an MS-Diffusion checkpoint or its folder")
    return {"name": "multi_subject", "path": str(path.resolve()), "subjects": entries, "scale": scale}


def style_reference_image(reference: Path, what: str = "--style-reference") -> Path:
    """The image of ``--style-reference``: an image file, or a finished run directory's exported poster."""
    reference = Path(reference).expanduser()
    if reference.is_dir():
        poster = reference / RUN_REFERENCE
        if not poster.is_file():
            raise DreamsmithError(f"{what} {reference} is a folder without {RUN_REFERENCE}; export the run first "
                                  f"(`dreamsmith export {reference}`) or pass an image")
        reference = poster
    return check_image(reference, what).resolve()


def style_spec(reference: Path, what: str = "--style-reference") -> dict[str, Any]:
    """The ``style_aligned`` conditioner entry of a style reference."""
    return {"name": "style_aligned", "image": str(style_reference_image(reference, what))}


def model_aligner(model: str) -> Path | None:
    """The aligner folder of ``model`` (the embedded image adapter's for an embedded model, else ``aligner/`` in the
    model's folder), or None when it has none."""
    adapter = EMBEDDED_ADAPTERS.get(model)
    folder = Path(resolve_model(adapter if adapter is not None else model)).expanduser() / ALIGNER_FOLDER
    return folder if (folder / "config.json").is_file() else None


def multimodal_spec(prompt: str, model: str) -> dict[str, Any] | None:
    """The ``multimodal_prompt`` conditioner entry of a prompt with ``<image:PATH>`` placeholders for ``model`` (None
    for a prompt without): the images checked, the model's aligner found."""
    if not has_images(prompt):
        return None
    images = check_prompt_images(prompt)
    aligner = model_aligner(model)
    if aligner is None:
        raise DreamsmithError(f"the prompt's <image:...> needs an aligner for {model}, which has none (a model folder "
                              f"may hold {ALIGNER_FOLDER}/ and image_encoder/; the embedded toyworld's is in "
                              "toyworld-ip); write the prompt in words or pass the image as --image")
    return {"name": "multimodal_prompt", "aligner": str(aligner.resolve()), "refs": list(images),
            "images": [str(path) for path in images.values()]}


def with_prompt_images(raw: dict[str, Any], default: str) -> dict[str, Any]:
    """A raw run config whose prompt has image placeholders, with each stage's ``multimodal_prompt`` entry added
    (for the stage's own model, else the run's, else ``default``)."""
    if not has_images(raw.get("prompt") or ""):
        return raw
    for stage in raw["stages"]:
        spec = multimodal_spec(raw["prompt"], stage.get("model") or raw.get("model") or default)
        guidance = stage.setdefault("guidance", {})
        guidance["conditioners"] = [*(guidance.get("conditioners") or []), spec]
    return raw


def aligned_words(conditioners: list[dict[str, Any]] | None) -> int:
    """The words each image of the prompt becomes (the ``multimodal_prompt`` entry's aligner's K; 0 without one)."""
    for spec in conditioners or []:
        if isinstance(spec, dict) and spec.get("name") == "multimodal_prompt":
            try:
                return int(json.loads((Path(spec["aligner"]) / "config.json").read_text())["tokens"])
            except (OSError, ValueError, KeyError, TypeError):
                return 1
    return 0
