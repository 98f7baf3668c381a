"""SDS gradients recorded before the distillation core was written (``tests/data/sds_reference.pt``):
the core must reproduce them on the tiny random models and on the embedded prior, to float32 rounding (bit for bit
until the libraries' kernels changed: diffusers 0.42 / transformers 5.25 move them by at most 1.3e-5 of their
largest entry, the same at the commit the recording was last checked against).

Re-record (only when the SDS math is meant to change): ``python tests/test_guidance_reference.py``; when
the shipped embedded prior is retrained (its weights changed, not the math), re-record its case alone:
``python tests/test_guidance_reference.py toyworld``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput

REFERENCE = Path(__file__).parent / "data" / "sds_reference.pt"
CASES = {
    # name: (guidance options, views, render size, seed, step)
    "tiny_pixel": ({"prompt": "a red cube", "guidance_scale": 7.5}, 2, 8, 7, 0),
    "tiny_pixel_scheduled": (
        {"prompt": "a red cube", "guidance_scale": [0, 7.5, 2.0, 100], "max_step_percent": [0, 0.98, 0.5, 100],
         "grad_clip": 0.05, "weighting": "fantasia"}, 3, 8, 3, 60),
    "tiny_sd": ({"prompt": "a hamburger", "negative_prompt": "blurry"}, 2, 16, 5, 0),
    "tiny_sd_vpred": ({"prompt": "a hamburger", "weighting": "uniform"}, 2, 16, 9, 0),
    "toyworld": ({"prompt": "a red cube", "guidance_scale": 7.5, "view_dependent_prompting": False}, 2, 32, 1, 10),
}


def case_inputs(views: int, size: int) -> tuple[torch.Tensor, Cameras]:
    rgb = torch.rand(views, size, size, 3, generator=torch.Generator().manual_seed(100 + views))
    azimuth = torch.linspace(0.0, 250.0, views)
    elevation = torch.linspace(10.0, 70.0, views)
    cameras = Cameras.from_spherical(azimuth, elevation, torch.tensor(2.0), torch.tensor(40.0), size)
    return rgb, cameras


def sds_gradient(prior, name: str) -> torch.Tensor:
    """d(loss)/d(rgb) of the SDS guidance for case ``name``."""
    from dreamsmith.guidance import GUIDANCES

    options, views, size, seed, step = CASES[name]
    guidance_class = GUIDANCES["sds"]
    guidance = guidance_class(prior, guidance_class.config_class(**options))
    rgb, cameras = case_inputs(views, size)
    rgb.requires_grad_(True)
    render = RenderOutput(rgb=rgb, opacity=torch.ones(views, size, size, 1), depth=torch.ones(views, size, size, 1))
    guidance(render, cameras, step, torch.Generator().manual_seed(seed)).loss.backward()
    return rgb.grad.detach().clone()


def prior_for(name: str, request: pytest.FixtureRequest):
    if name == "toyworld":
        from dreamsmith.engine.presets import embedded_model_path
        from dreamsmith.guidance import load_prior

        return load_prior(embedded_model_path("toyworld"))
    fixture = {"tiny_pixel": "tiny_pixel_prior", "tiny_pixel_scheduled": "tiny_pixel_prior",
               "tiny_sd": "tiny_sd_prior", "tiny_sd_vpred": "tiny_sd_vpred_prior"}[name]
    return request.getfixturevalue(fixture)


@pytest.mark.parametrize("name", list(CASES))
def test_sds_reproduces_its_recorded_gradients(name, request):
    torch.set_num_threads(1)
    expected = torch.load(REFERENCE, weights_only=True)[name]
    scale = float(expected.abs().max())
    torch.testing.assert_close(sds_gradient(prior_for(name, request), name), expected, rtol=0.0, atol=1e-4 * scale)


def _record(only: list[str]) -> None:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import build_tiny_pixel, build_tiny_sd

    from dreamsmith.engine.presets import embedded_model_path
    from dreamsmith.guidance import load_prior

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        priors = {
            "tiny_pixel": load_prior(build_tiny_pixel(Path(folder) / "tiny-pixel")),
            "tiny_sd": load_prior(build_tiny_sd(Path(folder) / "tiny-sd")),
            "tiny_sd_vpred": load_prior(build_tiny_sd(Path(folder) / "tiny-sd-vpred", prediction_type="v_prediction")),
            "toyworld": load_prior(embedded_model_path("toyworld")),
        }
        priors["tiny_pixel_scheduled"] = priors["tiny_pixel"]
        names = only or list(CASES)
        grads = torch.load(REFERENCE, weights_only=True) if only else {}
        grads.update({name: sds_gradient(priors[name], name) for name in names})
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save(grads, REFERENCE)
    print({name: float(g.abs().sum()) for name, g in grads.items()})


if __name__ == "__main__":
    _record(sys.argv[1:])
