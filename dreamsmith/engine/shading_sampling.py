"""Which shading and light each training step uses (DreamFusion Sec. 3.1).

DreamFusion renders albedo only at first, then picks per step between albedo, lambertian and
textureless shading under a light near the camera; textureless renders force the geometry, not
the texture, to explain the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamsmith.renderers.cameras import Cameras


@dataclass
class ShadingConfig:
    albedo_steps: int = 1000
    """Steps at the start that render albedo only."""
    albedo_probability: float = 0.2
    """Afterwards, chance of an albedo render."""
    textureless_probability: float = 0.5
    """Chance of a textureless render among the shaded ones."""
    light: str = "dreamfusion"
    """dreamfusion: a directional light near the camera, perturbed; headlight: light from the camera."""
    light_perturb: float = 1.0
    """Standard deviation of the light position perturbation (metres) for the dreamfusion light."""
    ambient: float = 0.1
    """Ambient light."""
    diffuse: float = 0.9
    """Diffuse light."""
    preview_shading: str = "lambertian"
    """Shading of preview renders."""


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
