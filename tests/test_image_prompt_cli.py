"""`generate --image` / `--style-reference` through the command line: bad input in one line before torch loads,
and an image-only run end to end."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from ip_adapter_states import plain_state, save_safetensors, tiny_clip_vision
from PIL import Image
from test_cli_usage import run_cli as probe_cli
from test_generate import SMALL
from test_generate import run_cli as cli


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    (folder / "text.png").write_text("not an image")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    Image.new("L", (10000, 10000)).save(folder / "huge.png")
    Image.fromarray(np.full((24, 24, 3), (240, 128, 25), np.uint8)).save(folder / "orange.png")
    (folder / "adapter.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "text.png"], "text.png is not a readable image"),
        (["--image", "dot.png"], "is 1×1: too small"),
        (["--image", "huge.png"], "is 10000×10000, more than 16 megapixels"),
        (["--image", "missing.png"], "--image missing.png does not exist"),
        (["--image", "orange.png", "--model", "."], "--image needs --ip-adapter with an IP-Adapter for ."),
        (["--image", "orange.png", "--ip-adapter", "none.safetensors"], "--ip-adapter none.safetensors does not exist"),
        (["--image", "orange.png", "--image-scale", "-1"], "--image-scale must be >= 0"),
        (["--ip-adapter", "adapter.safetensors"], "say what to make"),
        (["a red cube", "--ip-adapter", "adapter.safetensors"], "--ip-adapter needs --image"),
        (["a red cube", "--style-reference", "dot.png"], "is 1×1: too small"),
        (["a red cube", "--style-reference", "."], "a folder without asset_poster.png"),
    ],
)
def test_bad_image_input_is_one_line_before_torch_loads(images, args, message, monkeypatch):
    monkeypatch.chdir(images)
    result, stderr = probe_cli("generate", *args)
    assert result == {"code": 1, "torch": False, "diffusers": False}, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 2


def test_an_image_alone_makes_an_asset_and_its_run_is_a_style_reference(images, tiny_sd_dir, tiny_sd_prior,
                                                                          tmp_path):
    adapter = tmp_path / "h94" / "ip-adapter_sd15.safetensors"
    save_safetensors(plain_state(tiny_sd_prior.unet, seed=2), adapter)
    tiny_clip_vision(adapter.parent / "image_encoder")
    out = tmp_path / "run"
    result = cli("generate", "--image", str(images / "orange.png"), "--ip-adapter", str(adapter), "--image-scale",
                 "0.7", "--model", str(tiny_sd_dir), "--steps", "2", "--out", str(out), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["prompt"] == ""
    spec, = config["stages"][0]["guidance"]["conditioners"]
    assert spec["name"] == "ip_adapter" and spec["scale"] == 0.7 and spec["image"].endswith("orange.png")
    styled = tmp_path / "styled"
    result = cli("generate", "a hamburger", "--style-reference", str(out), "--model", str(tiny_sd_dir), "--steps",
                 "2", "--out", str(styled), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    spec, = yaml.safe_load((styled / "config.yaml").read_text())["stages"][0]["guidance"]["conditioners"]
    assert spec == {"name": "style_aligned", "image": str((out / "asset_poster.png").resolve())}
    wrong = cli("generate", "a hamburger", "--image", str(images / "orange.png"), "--ip-adapter", str(adapter),
                "--model", str(tmp_path / "none"), "--quiet")
    assert wrong.returncode == 1 and "does not exist" in wrong.stderr and "Traceback" not in wrong.stderr
