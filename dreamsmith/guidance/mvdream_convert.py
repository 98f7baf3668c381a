"""MVDream's LDM-layout checkpoint (``sd-v2.1-base-4view``) as a diffusers model folder dreamsmith loads.

The checkpoint holds the whole latent-diffusion model: the multi-view UNet under
``model.diffusion_model.`` (with its ``camera_embed``), and the VAE (``first_stage_model.``) and OpenCLIP
text encoder (``cond_stage_model.``) of Stable Diffusion 2.1-base, which MVDream kept frozen. The UNet
is converted (:mod:`dreamsmith.guidance.ldm_unet`; the camera MLP becomes the projection class
embedding) and written as safetensors; VAE, text encoder, tokenizer and scheduler are the base
pipeline's own (a tokenizer is not in the checkpoint at all). ``dreamsmith.json`` names the multi-view
attention and MVDream's camera input, so :func:`dreamsmith.guidance.loading.load_prior` makes a prior
that runs them on every call.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.ldm_unet import rename_ldm_unet, unet_config_from_ldm
from dreamsmith.guidance.loading import read_checkpoint, resolve_model_folder
from dreamsmith.guidance.priors import METADATA_FILE

UNET_PREFIX = "model.diffusion_model."
FROZEN_PREFIXES = ("first_stage_model.", "cond_stage_model.")
"""Stable Diffusion's own VAE and text encoder inside the checkpoint: taken from the base pipeline instead."""
BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")
MVDREAM_METADATA = {"attention": "multiview", "views_per_group": 4, "camera_conditioning": "mvdream"}
SHOWN_KEYS = 6


def _named(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:SHOWN_KEYS])
    return shown + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")


def convert_unet(state: Mapping[str, torch.Tensor], params: Mapping[str, Any], source: str) -> torch.nn.Module:
    """The checkpoint's multi-view UNet as a ``UNet2DConditionModel``; a checkpoint with missing or
    unexpected keys (or shapes that do not fit ``params``) is refused in one line naming them."""
    from diffusers import UNet2DConditionModel

    unet_state = {k.removeprefix(UNET_PREFIX): v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    unexpected = [k for k in state if not k.startswith((UNET_PREFIX, *FROZEN_PREFIXES))]
    renamed, unplaced = rename_ldm_unet(unet_state, params)
    unexpected += [UNET_PREFIX + k for k in unplaced]
    config = unet_config_from_ldm(params, sample_size=int(params["image_size"]))
    with torch.device("meta"):  # the expected keys and shapes, without allocating a full-size model
        expected = UNet2DConditionModel(**config).state_dict()
    missing = [k for k in expected if k not in renamed]
    wrong = [k for k, v in renamed.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"{label}: {_named(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("keys of another shape", wrong)) if keys]
    if problems:
        raise ModelLoadError(f"{source} is not an MVDream multi-view UNet of the configured architecture; "
                             + "; ".join(problems))
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(renamed, strict=True)
    return unet


def _check_base(folder: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """The base pipeline's model_index.json, after checking its components fit the converted UNet."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"the base {folder} is not a diffusers pipeline folder: it has no model_index.json")
    index = json.loads(index_file.read_text())
    for name in BASE_COMPONENTS:
        if not (folder / name / ("tokenizer_config.json" if name == "tokenizer" else "")).exists():
            raise ModelLoadError(f"the base {folder} has no {name}/; MVDream needs Stable Diffusion 2.1-base's")
    text_config = json.loads((folder / "text_encoder" / "config.json").read_text())
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    scheduler = json.loads(next((folder / "scheduler").glob("*.json")).read_text())
    mismatches = [
        f"its text encoder is {text_config.get('hidden_size')} wide, the UNet reads {params['context_dim']}"
        if text_config.get("hidden_size") != params["context_dim"] else "",
        f"its VAE has {vae_config.get('latent_channels')} latent channels, the UNet reads {params['in_channels']}"
        if vae_config.get("latent_channels") != params["in_channels"] else "",
        f"its scheduler predicts {scheduler.get('prediction_type')}, MVDream predicts epsilon"
        if scheduler.get("prediction_type", "epsilon") != "epsilon" else "",
    ]
    mismatches = [m for m in mismatches if m]
    if mismatches:
        raise ModelLoadError(f"the base {folder} does not fit the checkpoint: {'; '.join(mismatches)} "
                             "(MVDream's sd-v2.1-base-4view needs stabilityai/stable-diffusion-2-1-base)")
    return index


def convert_mvdream(
    checkpoint: Path, out_dir: Path, params: Mapping[str, Any], base: str, allow_pickle: bool = False
) -> Path:
    """Write ``out_dir``: a diffusers pipeline folder with the checkpoint's multi-view UNet (safetensors),
    the ``base`` pipeline's VAE, text encoder, tokenizer and scheduler, and a ``dreamsmith.json`` naming
    the multi-view attention and MVDream's camera input. ``params``: the UNet's LDM ``unet_config.params``."""
    unet = convert_unet(read_checkpoint(checkpoint, allow_pickle), params, str(checkpoint))
    base_folder = resolve_model_folder(base, allow_pickle)
    index = _check_base(base_folder, params)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in BASE_COMPONENTS:
        shutil.copytree(base_folder / name, partial / name)  # follows the Hub cache's symlinks
    unet.save_pretrained(partial / "unet", safe_serialization=True)
    model_index = {key: index[key] for key in ("_class_name", "_diffusers_version", *BASE_COMPONENTS) if key in index}
    model_index["unet"] = ["diffusers", "UNet2DConditionModel"]
    (partial / "model_index.json").write_text(json.dumps(model_index, indent=2))
    metadata = {**MVDREAM_METADATA, "converted_from": checkpoint.name, "base": base}
    (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    if out_dir.exists():
        out_dir.rmdir()  # empty: checked before converting
    partial.rename(out_dir)
    return out_dir
