"""The toyworld-ip training script end to end on a tiny base model: seeded, resumable, and its folder loads as an
IP-Adapter in the published layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_toyworld import _load_script

from dreamsmith.guidance.ip_adapter_loading import image_prompt
from dreamsmith.guidance.loading import load_prior


def _argv(base: Path, out: Path, steps: int) -> list[str]:
    return ["--base", str(base), "--out", str(out), "--state-dir", str(out.parent / "state"), "--steps", str(steps),
            "--batch-size", "4", "--n-images", "48", "--threads", "1", "--checkpoint-every", "2", "--embed-dim", "16",
            "--encoder-channels", "8,16"]


@pytest.fixture(scope="module")
def runs(tiny_pixel_rays_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("toyworld-ip")
    script = _load_script("train_toyworld_ip")
    straight = script.main(_argv(tiny_pixel_rays_dir, folder / "straight" / "toyworld-ip", 4))
    script.main(_argv(tiny_pixel_rays_dir, folder / "resumed" / "toyworld-ip", 2))
    resumed = script.main([*_argv(tiny_pixel_rays_dir, folder / "resumed" / "toyworld-ip", 4), "--resume"])
    return folder, straight, resumed


def test_training_is_seeded_and_a_resumed_run_matches_an_uninterrupted_one(runs):
    _, straight, resumed = runs
    assert len(straight["losses"]) == 4 and all(np.isfinite(straight["losses"]))
    assert resumed["losses"] == straight["losses"] and resumed["resumes"][0]["step"] == 2


def test_the_written_folder_loads_as_an_ip_adapter_for_its_base(runs, tiny_pixel_rays_dir):
    folder, straight, _ = runs
    out = folder / "straight" / "toyworld-ip"
    assert sorted(p.name for p in out.iterdir()) == ["image_encoder", "ip_adapter.safetensors", "train_log.json"]
    assert json.loads((out / "train_log.json").read_text())["steps_done"] == 4
    prior = load_prior(tiny_pixel_rays_dir)
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 1
    conditioner = image_prompt(out, red, prior)
    assert conditioner.image_tokens.shape == (1, 4, 32)
    z, t, text = torch.randn(2, 3, 8, 8), torch.tensor([400, 600]), prior.encode_prompts(["a red cube"] * 2)
    changed = prior.predict_noise(z, t, text, conditioners=[conditioner]) - prior.predict_noise(z, t, text)
    assert changed.abs().max() > 1e-4
