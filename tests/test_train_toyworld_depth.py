"""The toyworld depth ControlNet trainer on a tiny run: depth controls as the conditioner makes them, a folder the
controlnet conditioner loads for the toyworld prior, and a resumed run identical to a straight one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dreamsmith.guidance.conditioner_registry import build_conditioners
from dreamsmith.guidance.conditioners import ConditionContext
from dreamsmith.guidance.loading import load_prior
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.toyworld.data import generate_toyworld_dataset

ROOT = Path(__file__).resolve().parents[1]
TOYWORLD = ROOT / "dreamsmith" / "models" / "toyworld"


def _script():
    spec = importlib.util.spec_from_file_location("train_toyworld_depth", ROOT / "tools" / "train_toyworld_depth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_depth_controls_are_near_bright_and_background_black():
    data = generate_toyworld_dataset(24, resolution=16, seed=1, depth_control=True)
    plain = generate_toyworld_dataset(24, resolution=16, seed=1)
    assert torch.equal(data.images, plain.images)  # the same renders, depth beside them
    foreground = (data.images.int().sum(-1) < 3 * 255)  # white background
    control = data.depth_control
    assert control.shape == (24, 16, 16) and not control[~foreground].any()
    assert (control.flatten(1).amax(1) == 255).all()  # the nearest point of every view is the brightest


def run(tmp_path: Path, name: str, *extra: str) -> dict:
    argv = ["--base", str(TOYWORLD), "--out", str(tmp_path / name), "--state-dir", str(tmp_path / f"{name}-state"),
            "--batch-size", "2", "--n-images", "24", "--checkpoint-every", "2", "--threads", "1", *extra]
    return _script().main(argv)


@pytest.mark.slow
def test_training_resumes_exactly_and_writes_a_controlnet_the_toyworld_prior_takes(tmp_path):
    straight = run(tmp_path, "straight", "--steps", "3")
    run(tmp_path, "resumed", "--steps", "2")
    resumed = run(tmp_path, "resumed", "--steps", "3", "--resume")
    assert resumed["losses"] == straight["losses"] and len(straight["losses"]) == 3
    assert resumed["resumes"][0]["step"] == 2
    folder = tmp_path / "straight"
    assert json.loads((folder / "dreamsmith.json").read_text())["control_source"] == "depth"
    prior = load_prior(TOYWORLD)
    cameras = Cameras.from_spherical(torch.tensor([30.0]), torch.tensor(20.0), torch.tensor(2.0),
                                     torch.tensor(40.0), 32)
    render = RenderOutput(rgb=torch.rand(1, 32, 32, 3), opacity=torch.ones(1, 32, 32, 1),
                          depth=torch.linspace(1.5, 2.5, 32).view(1, 32, 1, 1).expand(1, 32, 32, 1))
    z_t = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    embeds = prior.encode_prompts(["a red cube"])
    context = ConditionContext(render=render, cameras=cameras)
    plain = prior.predict_noise(z_t, 500, embeds, cameras=cameras)
    for scale, differs in ((0.0, False), (1.0, True)):
        control = build_conditioners([{"name": "controlnet", "model": str(folder), "scale": scale}], prior)
        eps = prior.predict_noise(z_t, 500, embeds, cameras=cameras, conditioners=control, context=context)
        assert (not torch.equal(eps, plain)) == differs
