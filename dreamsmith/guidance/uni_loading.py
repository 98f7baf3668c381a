"""Uni-ControlNet's published checkpoint (``uni.ckpt``, the authors' LDM layout) as our adapters.

The checkpoint holds the whole model: Stable Diffusion 1.5 (``model.diffusion_model.``, ``first_stage_model.``,
``cond_stage_model.``: the stage's own base model, not read here), the local adapter under ``local_adapter.`` and
the global adapter under ``global_adapter.``. The local adapter's encoder copy is in the LDM UNet layout
(``input_blocks`` / ``middle_block``, :mod:`dreamsmith.guidance.ldm_unet`), its first ResBlock of each level with
FDN norms (``norm_in`` / ``norm_out``: ``conv_gamma``, ``conv_beta``) instead of GroupNorms; ``zero_convs.N.0``
and ``middle_block_out.0`` are its zero convolutions; ``feature_extractor.`` keeps its own names. Every size is
read from the tensors (local channels, injected widths, global width and token count), so a smaller checkpoint in
the same layout loads the same way; a key without a place, or a place without a key, is refused in one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.ldm_unet import RESBLOCK_NAMES, ldm_name, rename_ldm_unet
from dreamsmith.guidance.mvdream_convert import read_checkpoint
from dreamsmith.guidance.uni_controlnet import UniGlobalAdapter, UniLocalAdapter

LOCAL_PREFIX = "local_adapter."
GLOBAL_PREFIX = "global_adapter."
BASE_PREFIXES = ("model.", "model_ema.", "first_stage_model.", "cond_stage_model.", "betas", "alphas_cumprod",
                 "alphas_cumprod_prev", "sqrt_", "log_one_minus_", "posterior_", "logvar")
"""The base latent-diffusion model's own tensors in the checkpoint: the stage's base model stands in for them."""
LOCAL_RESBLOCK_NAMES = {
    **RESBLOCK_NAMES,
    "norm_in.conv_gamma": "norm1.conv_gamma",
    "norm_in.conv_beta": "norm1.conv_beta",
    "norm_out.conv_gamma": "norm2.conv_gamma",
    "norm_out.conv_beta": "norm2.conv_beta",
}
_ZERO_CONV = re.compile(r"^zero_convs\.(\d+)\.0\.(weight|bias)$")
_MID_OUT = re.compile(r"^middle_block_out\.0\.(weight|bias)$")
_INJECTED = re.compile(r"^input_blocks\.(\d+)\.0\.norm_in\.conv_gamma\.weight$")


def ldm_params(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """The LDM ``unet_config.params`` that name a diffusers UNet's blocks (for :func:`rename_ldm_unet`)."""
    channels = list(unet_config["block_out_channels"])
    return {
        "model_channels": channels[0],
        "channel_mult": [c // channels[0] for c in channels],
        "num_res_blocks": int(unet_config["layers_per_block"]),
        "attention_resolutions": [2**level for level, kind in enumerate(unet_config["down_block_types"])
                                  if "CrossAttn" in kind],
    }


@dataclass
class Placed:
    """An adapter, its weights under our keys, and the checkpoint keys that do not fit it."""

    module: torch.nn.Module
    renamed: dict[str, torch.Tensor]
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


def _placed(module: torch.nn.Module, renamed: dict[str, torch.Tensor], names: Callable[[str], str],
            unplaced: list[str]) -> Placed:
    """``renamed`` (our key -> tensor; ``names``: our key -> the checkpoint's) against ``module``'s keys."""
    expected = module.state_dict()
    return Placed(module, renamed, missing=[names(k) for k in expected if k not in renamed],
                  unexpected=unplaced + [names(k) for k in renamed if k not in expected],
                  wrong=[names(k) for k, v in renamed.items() if k in expected and v.shape != expected[k].shape])


def place_local_adapter(state: Mapping[str, torch.Tensor], base_unet: Any, source: str) -> Placed:
    """The local adapter of ``state`` (keys without ``local_adapter.``) for the base UNet ``base_unet``."""
    from diffusers import ControlNetModel

    stem = state.get("feature_extractor.pre_extractor.0.weight")
    if stem is None:
        raise ModelLoadError(f"{source} has a local adapter without feature_extractor.pre_extractor.0.weight")
    inject_channels = []
    while f"feature_extractor.extractors.{len(inject_channels)}.0.weight" in state:
        inject_channels.append(int(state[f"feature_extractor.extractors.{len(inject_channels)}.0.weight"].shape[0]))
    params = ldm_params(base_unet.config)
    blocks = params["num_res_blocks"]
    injected = sorted(int(m.group(1)) for m in map(_INJECTED.match, state) if m)
    expected_layers = [1 + level * (blocks + 1) for level in range(len(inject_channels))]
    if injected != expected_layers:
        raise ModelLoadError(f"{source}: FDN in input blocks {injected}, but its {len(inject_channels)} feature "
                             f"levels fit the first ResBlock of each level, input blocks {expected_layers}")
    encoder = ControlNetModel.from_unet(base_unet, load_weights_from_unet=False)
    adapter = UniLocalAdapter(encoder, int(stem.shape[1]), inject_channels)
    renamed: dict[str, torch.Tensor] = {}
    unet_part: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        zero_conv, mid_out = _ZERO_CONV.match(key), _MID_OUT.match(key)
        if key.startswith("feature_extractor."):
            ours = key
        elif zero_conv:
            ours = f"encoder.controlnet_down_blocks.{zero_conv.group(1)}.{zero_conv.group(2)}"
        elif mid_out:
            ours = f"encoder.controlnet_mid_block.{mid_out.group(1)}"
        else:
            unet_part[key] = value
            continue
        renamed[ours] = value
    encoder_state, unplaced = rename_ldm_unet(unet_part, params, LOCAL_RESBLOCK_NAMES)
    renamed.update({"encoder." + key: value for key, value in encoder_state.items()})
    return _placed(adapter, renamed, lambda key: LOCAL_PREFIX + local_checkpoint_name(key, params),
                   [LOCAL_PREFIX + k for k in unplaced])


def local_checkpoint_name(key: str, params: Mapping[str, Any]) -> str:
    """The checkpoint's name (without ``local_adapter.``) of one of our local adapter's keys."""
    zero_conv = re.match(r"^encoder\.controlnet_down_blocks\.(\d+)\.(\w+)$", key)
    if zero_conv:
        return f"zero_convs.{zero_conv.group(1)}.0.{zero_conv.group(2)}"
    if key.startswith("encoder.controlnet_mid_block."):
        return "middle_block_out.0." + key.removeprefix("encoder.controlnet_mid_block.")
    if key.startswith("encoder."):
        return ldm_name(key.removeprefix("encoder."), params, LOCAL_RESBLOCK_NAMES)
    return key


def place_global_adapter(state: Mapping[str, torch.Tensor], source: str) -> Placed:
    """The global adapter of ``state`` (keys without ``global_adapter.``)."""
    try:
        in_dim = int(state["norm1.weight"].shape[0])
        first = int(state["ff1.net.2.weight"].shape[0]) // in_dim
        second = int(state["ff2.net.2.weight"].shape[0]) // in_dim
    except KeyError as error:
        raise ModelLoadError(f"{source} has a global adapter without {GLOBAL_PREFIX}{error.args[0]}") from None
    return _placed(UniGlobalAdapter(in_dim, (first, second)), dict(state), lambda key: GLOBAL_PREFIX + key, [])


def load_uni_controlnet(
    path: str | Path, base_unet: Any, device: torch.device | str, dtype: torch.dtype, allow_pickle: bool = False
) -> tuple[UniLocalAdapter | None, UniGlobalAdapter | None]:
    """(local adapter, global adapter) of a Uni-ControlNet checkpoint (either may be absent: the authors' local-
    and global-only checkpoints), frozen, for ``base_unet``'s architecture."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"no Uni-ControlNet checkpoint at {path}")
    state = read_checkpoint(path, allow_pickle)
    local = {k.removeprefix(LOCAL_PREFIX): v for k, v in state.items() if k.startswith(LOCAL_PREFIX)}
    global_ = {k.removeprefix(GLOBAL_PREFIX): v for k, v in state.items() if k.startswith(GLOBAL_PREFIX)}
    if not local and not global_:
        raise ModelLoadError(f"{path} has no local_adapter.* or global_adapter.* keys: not a Uni-ControlNet checkpoint")
    placed = [place_local_adapter(local, base_unet, str(path)) if local else None,
              place_global_adapter(global_, str(path)) if global_ else None]
    stray = [k for k in state if not k.startswith((LOCAL_PREFIX, GLOBAL_PREFIX, *BASE_PREFIXES))]
    found = [p for p in placed if p is not None]
    problems = [f"{label}: {', '.join(sorted(keys))}" for label, keys in (
        ("missing keys", [k for p in found for k in p.missing]),
        ("unexpected keys", stray + [k for p in found for k in p.unexpected]),
        ("keys of another shape", [k for p in found for k in p.wrong])) if keys]
    if problems:
        raise ModelLoadError(f"{path} is not a Uni-ControlNet for this base model; " + "; ".join(problems))
    if placed[1] is not None and placed[1].module.in_dim != base_unet.config.cross_attention_dim:
        raise ModelLoadError(f"{path}: the global adapter makes tokens {placed[1].module.in_dim} wide, the base "
                             f"model's text tokens are {base_unet.config.cross_attention_dim} wide")
    for p in found:
        p.module.load_state_dict(p.renamed, strict=True)
        p.module.requires_grad_(False).eval().to(device=device, dtype=dtype)
    local_adapter, global_adapter = (p.module if p is not None else None for p in placed)
    return local_adapter, global_adapter  # type: ignore[return-value]
