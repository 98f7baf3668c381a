"""Presets: named lists of stages in YAML beside this module, and the model each defaults to."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dreamsmith.errors import ConfigError, ModelLoadError
from dreamsmith.paths import EMBEDDED_PREFIX, embedded_model_path, resolve_model  # noqa: F401 (re-exported)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
"""A Hugging Face model id, ``owner/name`` (the rule ``guidance.loading`` applies when it loads)."""


def _preset_files() -> dict[str, Any]:
    folder = resources.files("dreamsmith.engine") / "presets"
    return {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def preset_names() -> list[str]:
    return sorted(_preset_files())


def load_preset(name: str) -> dict[str, Any]:
    """The raw preset: ``description``, ``model`` and ``stages`` (and optionally ``export``).

    A preset with ``base: OTHER`` is OTHER with its keys replaced and its ``stages`` merged stage by stage
    (the i-th entry deep-merged into OTHER's i-th stage; extra entries appended), e.g. ``toy-vsd`` is
    ``toy`` with another guidance section."""
    files = _preset_files()
    if name not in files:
        raise ConfigError(f"unknown preset '{name}'; available: {', '.join(sorted(files))}")
    raw = yaml.safe_load(files[name].read_text(encoding="utf-8"))
    if "base" not in raw:
        return raw
    from dreamsmith.engine.config import deep_merge

    base = load_preset(raw.pop("base"))
    changes = raw.pop("stages", [])
    stages = [deep_merge(stage, change) for stage, change in zip(base["stages"], changes, strict=False)]
    return {**base, **raw, "stages": stages + changes[len(stages):] + base["stages"][len(changes):]}


def default_model(preset: str) -> str:
    """The model a preset uses when no ``--model`` is given."""
    return load_preset(preset)["model"]


def preset_for_model(model: str | None) -> str:
    """The preset to use when none is named: toy for the embedded prior, dreamfusion-if for a local
    pixel-space model (a folder without a VAE), dreamfusion otherwise."""
    if model is None:
        return "toy"
    folder = Path(model)
    if folder.is_dir() and (folder / "model_index.json").exists() and not (folder / "vae").exists():
        return "dreamfusion-if"
    return "dreamfusion"


NEEDS_CONVERSION = {
    "MVDream/MVDream": "download sd-v2.1-base-4view.pt from it, convert it with `dreamsmith convert mvdream "
                       "sd-v2.1-base-4view.pt OUT_DIR --allow-pickle` and pass --model OUT_DIR",
}
"""Hugging Face repositories that publish checkpoints in another layout, and how to make them a model folder."""


def check_model(model: str) -> None:
    """Fail at once, before torch or a model loads, when ``model`` (``embedded:<name>`` resolved) is
    neither an existing folder nor a Hugging Face id, is an embedded model not shipped, or is a repository
    whose checkpoint must be converted first."""
    if model in NEEDS_CONVERSION:
        raise ModelLoadError(f"{model} publishes a checkpoint in another layout, not a diffusers model folder: "
                             f"{NEEDS_CONVERSION[model]}")
    path = Path(resolve_model(model)).expanduser()
    if model.startswith(EMBEDDED_PREFIX) and not path.is_dir():
        shipped = sorted(entry.name for entry in path.parent.iterdir() if (entry / "model_index.json").is_file())
        raise ModelLoadError(f"the embedded model '{model.removeprefix(EMBEDDED_PREFIX)}' is not shipped with this "
                             f"version of dreamsmith (shipped: {', '.join(shipped)}); pass --model with a model folder")
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; pass a diffusers model folder (with model_index.json)")
        return
    if not (HUB_ID.match(model) and not model.startswith(".")):
        raise ModelLoadError(
            f"model folder {path} does not exist; pass a diffusers model folder or a Hugging Face id (owner/name)"
        )


GUIDANCE_VIEWS = {"mvdream": 4}
"""Views of one object each multi-view guidance method judges together (the others: 1). Known here without
torch, so a model that cannot serve a stage is refused before anything loads; a test keeps it equal to
the guidance registry's ``views_per_group``."""


def _read_metadata(folder: Path, name: str) -> dict[str, Any]:
    """A JSON file of a local model folder ({} when absent)."""
    path = folder / name
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from None


def model_views(model: str) -> int | None:
    """How many views of one object a local model denoises together, from its ``dreamsmith.json``
    (``"attention": "multiview"`` with ``views_per_group``; 1 otherwise); None for a Hugging Face id,
    which is checked when it loads."""
    folder = Path(resolve_model(model)).expanduser()
    if not folder.is_dir():
        return None
    metadata = _read_metadata(folder, "dreamsmith.json")
    views = metadata.get("views_per_group", 1) if metadata.get("attention") == "multiview" else 1
    return views if isinstance(views, int) else None


IMAGE_GUIDANCES = ("ip2p", "in2n")
"""Guidance methods whose model also reads a source image (InstructPix2Pix, Instruct-NeRF2NeRF): known here without
torch, so a text-only model is refused before anything loads."""
RAY_CHANNELS = 6


def model_image_channels(model: str) -> int | None:
    """The input channels of a local model's UNet that carry a source image (InstructPix2Pix's image latents):
    the UNet's ``in_channels`` less the VAE's latent channels and any camera ray channels, or a pixel model's
    ``dreamsmith.json`` ``image_channels``; None for a Hugging Face id or a folder without configs."""
    folder = Path(resolve_model(model)).expanduser()
    unet = _read_metadata(folder, "unet/config.json") if folder.is_dir() else {}
    if "in_channels" not in unet:
        return None
    metadata = _read_metadata(folder, "dreamsmith.json")
    if not (folder / "vae").is_dir():
        return int(metadata.get("image_channels", 0))
    rays = RAY_CHANNELS if metadata.get("camera_conditioning") == "c2w16+rays" else 0
    return int(unet["in_channels"]) - int(_read_metadata(folder, "vae/config.json").get("latent_channels", 4)) - rays


def check_model_fits(model: str, guidance: str, where: str) -> None:
    """Refuse, before anything loads, a single-view model for a multi-view guidance and the reverse, and a
    text-only model for an image-conditioned guidance and the reverse; ``where``: the stage, for the message."""
    image_channels = model_image_channels(model)
    if image_channels is not None and (guidance in IMAGE_GUIDANCES) != (image_channels > 0):
        if image_channels > 0:
            raise ConfigError(f"{where}: {model} is an image-conditioned (InstructPix2Pix-style) model: it edits an "
                              f"asset with `dreamsmith edit SOURCE \"INSTRUCTION\" --model {model}`, not guidance "
                              f"{guidance}")
        raise ConfigError(f"{where}: guidance {guidance} needs an InstructPix2Pix-style model whose UNet also reads "
                          f"the source image (e.g. timbrooks/instruct-pix2pix, 8 input channels); {model} is a "
                          "text-only model")
    needed = GUIDANCE_VIEWS.get(guidance, 1)
    views = model_views(model)
    if views is None or views == needed:
        return
    if needed > 1:
        raise ConfigError(f"{where}: guidance {guidance} needs a multi-view model that denoises {needed} views of "
                          f"an object together (MVDream's sd-v2.1-base-4view converted with `dreamsmith convert "
                          f"mvdream CKPT OUT_DIR`, then --model OUT_DIR); {model} sees one view at a time")
    raise ConfigError(f"{where}: {model} is a multi-view model ({views} views together); use it with a multi-view "
                      f"guidance (guidance.name={next(iter(GUIDANCE_VIEWS))}, e.g. --preset mvdream), not {guidance}")
