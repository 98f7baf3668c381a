"""``dreamsmith convert``: checkpoints published in other layouts, as model folders dreamsmith loads.

What a user typed is checked here without torch (the command answers usage errors at once); the
conversion itself is :func:`dreamsmith.guidance.mvdream_convert.convert_mvdream`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dreamsmith.errors import ConfigError

MVDREAM_SD21_BASE_4VIEW: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 2,
    "channel_mult": [1, 2, 4, 4],
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "transformer_depth": 1,
    "context_dim": 1024,
    "camera_dim": 16,
}
"""The UNet of MVDream's ``sd-v2.1-base-4view`` (its configs/sd-v2-base.yaml, ``unet_config.params``):
Stable Diffusion 2.1-base's UNet at 32² latents with a 16-number camera embedding."""
MVDREAM_BASE = "stabilityai/stable-diffusion-2-1-base"
PICKLED = (".pt", ".ckpt", ".pth", ".bin", ".pkl")
REQUIRED_PARAMS = ("image_size", "in_channels", "out_channels", "model_channels", "attention_resolutions",
                   "num_res_blocks", "channel_mult", "num_head_channels", "context_dim", "camera_dim")


def unet_params(config: Path | None) -> dict[str, Any]:
    """The UNet's LDM params: MVDream's sd-v2.1-base-4view, or those of an LDM config file in MVDream's
    format (``model.params.unet_config.params``)."""
    if config is None:
        return dict(MVDREAM_SD21_BASE_4VIEW)
    try:
        raw = yaml.safe_load(config.read_text())
        params = raw["model"]["params"]["unet_config"]["params"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        raise ConfigError(f"--config {config}: not an LDM model config with model.params.unet_config.params "
                          f"({type(error).__name__}: {error})") from None
    missing = [key for key in REQUIRED_PARAMS if key not in params]
    if missing:
        raise ConfigError(f"--config {config}: unet_config.params lacks {', '.join(missing)}")
    if not params.get("use_spatial_transformer", False):
        raise ConfigError(f"--config {config}: only UNets with spatial transformers (use_spatial_transformer) convert")
    return dict(params)


def check_conversion(checkpoint: Path, out_dir: Path, allow_pickle: bool) -> None:
    """Refuse at once a checkpoint that is not there, a pickle without ``--allow-pickle``, and an output
    folder that already holds something."""
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {checkpoint} does not exist (or is not a file)")
    if checkpoint.suffix in PICKLED and not allow_pickle:
        raise ConfigError(f"{checkpoint} is a pickled checkpoint, which can run code when loaded; pass "
                          "--allow-pickle if you trust its source, or give a .safetensors conversion")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not an empty folder; choose another OUT_DIR")


def convert_mvdream(checkpoint: Path, out_dir: Path, base: str = MVDREAM_BASE, config: Path | None = None,
                    allow_pickle: bool = False) -> Path:
    """Check the request, then write ``out_dir`` (see :func:`dreamsmith.guidance.mvdream_convert.convert_mvdream`)."""
    check_conversion(checkpoint, out_dir, allow_pickle)
    params = unet_params(config)
    from dreamsmith.guidance.mvdream_convert import convert_mvdream as convert

    return convert(checkpoint, out_dir, params, base, allow_pickle)
