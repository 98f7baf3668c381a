"""The multimodal-prompt aligner's training script end to end: seeded, resumable, measured, and its folder aligns a
prompt's image for the embedded prior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_toyworld import _load_script

from dreamsmith.engine.presets import embedded_model_path
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.multimodal_prompt import load_prompt_images


def _argv(out: Path, steps: int) -> list[str]:
    return ["--out", str(out), "--state-dir", str(out.parent / "state"), "--steps", str(steps), "--batch-size", "4",
            "--n-images", "48", "--threads", "1", "--checkpoint-every", "2", "--eval-views", "1", "--log-every", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aligner")
    script = _load_script("train_toyworld_aligner")
    straight = script.main(_argv(folder / "straight" / "aligner", 4))
    script.main(_argv(folder / "resumed" / "aligner", 2))
    resumed = script.main([*_argv(folder / "resumed" / "aligner", 4), "--resume"])
    return folder, straight, resumed


def test_training_is_seeded_and_a_resumed_run_matches_an_uninterrupted_one(runs):
    folder, straight, resumed = runs
    assert len(straight["losses"]) == 4 and all(np.isfinite(straight["losses"]))
    assert resumed["losses"] == straight["losses"] and resumed["resumes"][0]["step"] == 2
    assert resumed["eval"] == straight["eval"]
    held_out = [row["caption"] for row in straight["eval"]["captions"] if row["held_out"]]
    assert sorted(held_out) == sorted(straight["held_out_captions"]) and len(held_out) == 4


def test_the_folder_aligns_a_prompt_image_and_the_card_has_its_section(runs, tmp_path):
    folder, _, _ = runs
    out = folder / "straight"
    assert sorted(p.name for p in (out / "aligner").iterdir()) == ["config.json", "model.safetensors",
                                                                    "train_log.json"]
    assert "## Multimodal prompts: the aligner" in (out / "README.md").read_text()
    assert (out / "aligner_loss.png").is_file()
    (out / "image_encoder").symlink_to(embedded_model_path("toyworld-ip") / "image_encoder")
    image = tmp_path / "red.png"
    Image.fromarray(np.full((32, 32, 3), (230, 30, 30), np.uint8)).save(image)
    prior = load_prior(embedded_model_path("toyworld"))
    before = prior.encode_prompts(["a red cube"])
    load_prompt_images(prior, out / "aligner", ["red.png"], [str(image)])
    tokens = json.loads((out / "aligner" / "config.json").read_text())["tokens"]
    assert len(prior.prompt_images["red.png"].split()) == tokens
    assert torch.equal(prior.encode_prompts(["a red cube"]), before)
    assert not torch.equal(prior.encode_prompts(["a <image:red.png>"]), before)
