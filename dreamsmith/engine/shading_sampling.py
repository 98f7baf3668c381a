"""Which shading and light each training step uses (DreamFusion Sec. 3.1).

DreamFusion renders albedo only at first, then picks per step between albedo, lambertian and
textureless shading under a light near the camera; textureless renders force the geometry, not
the texture, to explain the image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamsmith.engine.part_configs import ShadingConfig
from dreamsmith.renderers.cameras import Cameras


def choose_shading(config: ShadingConfig, step: int, generator: torch.Generator) -> str:
    """The shading mode of one step."""
    if step < config.albedo_steps:
        return "albedo"
    draw = torch.rand(2, generator=generator, device=generator.device).tolist()
    if draw[0] < config.albedo_probability:
        return "albedo"
    return "textureless" if draw[1] < config.textureless_probability else "lambertian"


def choose_light(config: ShadingConfig, cameras: Cameras, generator: torch.Generator) -> Tensor | None:
    """Unit directions ``[B, 3]`` towards the light of each view, or None for a headlight."""
    if config.light == "headlight":
        return None
    if config.light != "dreamfusion":
        raise ValueError(f"unknown light {config.light!r}; expected dreamfusion or headlight")
    noise = torch.randn(len(cameras), 3, generator=generator, device=generator.device).to(cameras.device)
    return torch.nn.functional.normalize(cameras.position + config.light_perturb * noise, dim=-1)
