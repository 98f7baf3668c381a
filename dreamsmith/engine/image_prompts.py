"""Image prompts and style references given as options (``--image``, ``--style-reference``, a batch row's
``style_reference``): resolved and checked without torch, turned into ``guidance.conditioners`` entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dreamsmith.engine.presets import EMBEDDED_PREFIX, resolve_model
from dreamsmith.errors import DreamsmithError
from dreamsmith.image_files import check_image

EMBEDDED_ADAPTERS = {"embedded:toyworld": "embedded:toyworld-ip"}
"""The image adapter shipped for each embedded model (used when ``--image`` comes without ``--ip-adapter``)."""
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
