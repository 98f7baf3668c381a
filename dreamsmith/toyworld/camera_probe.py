"""How much the embedded prior's noise prediction depends on its camera (and, for scale, its text).

A ground-truth render of a caption from one camera is noised at a few timesteps; the prior predicts
the noise given the right camera, cameras turned away from it, no camera and a wrong caption. A
prior that uses its camera predicts best with the right one; equal errors mean it ignores the camera
and score distillation against it cannot tell one side of an object from another.

    python -m dreamsmith.toyworld.camera_probe "a red cube" --azimuth 0 --elevation 20
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.toyworld import world as tw
from dreamsmith.toyworld.data import render_caption


@dataclass
class ProbeResult:
    """Mean squared noise-prediction error per condition, over timesteps and noise draws."""

    right: float
    """With the render's own camera and caption."""
    turned: dict[str, float]
    """With the camera moved by ``"daz,del"`` degrees (azimuth, elevation)."""
    no_camera: float
    """With the camera dropped (zeros, as in training's camera dropout)."""
    wrong_text: float
    """With the right camera and another caption (the text's effect, for scale)."""


def _camera(azimuth: float, elevation: float) -> Cameras:
    return Cameras.from_spherical(torch.tensor([azimuth]), torch.tensor([elevation]), torch.tensor(tw.CAMERA_DISTANCE),
                                  torch.tensor(tw.FOVY_DEG), 32)


@torch.no_grad()
def camera_sensitivity(prior: Any, text: str, wrong_text: str, azimuth: float = 0.0, elevation: float = 20.0,
                       offsets: tuple[tuple[float, float], ...] = ((45.0, 0.0), (180.0, 0.0), (0.0, 30.0)),
                       timesteps: tuple[int, ...] = (200, 400, 600), n_noise: int = 8) -> ProbeResult:
    """Noise-prediction errors of ``prior`` (a ``DiffusionPrior``) on the truth render of ``text`` from
    (``azimuth``, ``elevation``) degrees, mean over ``timesteps`` and ``n_noise`` seeded noise draws."""
    image = render_caption(text, _camera(azimuth, elevation)).permute(0, 3, 1, 2) * 2 - 1
    embeds = {caption: prior.encode_prompts([caption]) for caption in (text, wrong_text)}

    def error(cameras: Cameras | None, caption: str) -> float:
        total = 0.0
        for t in timesteps:
            alpha = prior.alphas_cumprod[t].cpu()
            for k in range(n_noise):
                noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(k))
                noisy = alpha.sqrt() * image + (1 - alpha).sqrt() * noise
                eps = prior.predict_noise(noisy, t, embeds[caption], cameras).cpu()
                total += float(((eps - noise) ** 2).mean())
        return total / (len(timesteps) * n_noise)

    right = _camera(azimuth, elevation)
    return ProbeResult(
        right=error(right, text),
        turned={f"{daz:g},{del_:g}": error(_camera(azimuth + daz, elevation + del_), text) for daz, del_ in offsets},
        no_camera=error(None, text),
        wrong_text=error(right, wrong_text),
    )


def main() -> None:
    from dreamsmith.engine.presets import embedded_model_path
    from dreamsmith.guidance.loading import load_prior

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caption", nargs="?", default="a red cube")
    parser.add_argument("--wrong", default="a red sphere", help="the other caption, for scale")
    parser.add_argument("--azimuth", type=float, default=0.0)
    parser.add_argument("--elevation", type=float, default=20.0)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded prior)")
    args = parser.parse_args()
    model = args.model or embedded_model_path("toyworld")
    result = camera_sensitivity(load_prior(model), args.caption, args.wrong, args.azimuth, args.elevation)
    print(json.dumps({"caption": args.caption, **asdict(result)}))


if __name__ == "__main__":
    main()
