"""`generate --instantid/--face-embedding` and `--photomaker/--id-image` through the command line: bad input in one
line before torch loads, and an InstantID run end to end on a tiny SD-shaped model."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from identity_states import instantid_folder
from PIL import Image
from safetensors.numpy import save_file
from test_cli_usage import run_cli as probe_cli
from test_generate import SMALL
from test_generate import run_cli as cli


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_sd_dir):
    folder = tmp_path_factory.mktemp("identity")
    np.save(folder / "face.npy", np.random.default_rng(0).standard_normal(512).astype(np.float32))
    np.save(folder / "short.npy", np.zeros(128, np.float32))
    # an SDXL InstantID adapter's header: the resampler writes 2048-wide tokens (the tiny SD model attends to 32)
    save_file({"image_proj.proj_out.weight": np.zeros((2048, 4), np.float32),
               "ip_adapter.1.to_k_ip.weight": np.zeros((2, 2), np.float32)}, str(folder / "sdxl-instantid.safetensors"))
    save_file({"id_encoder.fuse_module.layer_norm.weight": np.zeros(2048, np.float32),
               "lora_weights.x": np.zeros(1, np.float32)}, str(folder / "photomaker.safetensors"))
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(folder / "me.png")
    (folder / "ip-adapter.bin").write_bytes(b"")
    (folder / "model").symlink_to(tiny_sd_dir)
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--instantid", "ip-adapter.bin"], "--instantid needs --face-embedding FILE"),
        (["--instantid", "ip-adapter.bin", "--face-embedding", "none.npy"], "--face-embedding none.npy does not exist"),
        (["--instantid", "ip-adapter.bin", "--face-embedding", "short.npy"], "shape [128]; a face embedding is one"),
        (["--instantid", "ip-adapter.bin", "--face-embedding", "face.npy", "--id-scale", "-1"], "--id-scale must be"),
        (["--instantid", "none.bin", "--face-embedding", "face.npy"], "--instantid none.bin does not exist"),
        (["--face-embedding", "face.npy"], "--face-embedding needs --instantid"),
        (["--instantid", "sdxl-instantid.safetensors", "--face-embedding", "face.npy", "--model", "model"],
         "is for another base model: it writes 2048-wide text tokens, model attends to 32"),
        (["--photomaker", "photomaker.safetensors", "--id-image", "me.png"], "needs the trigger word 'img'"),
        (["--photomaker", "photomaker.safetensors"], "--photomaker needs --id-image"),
        (["--id-image", "me.png"], "--id-image needs --photomaker"),
        (["--photomaker", "none.bin", "--id-image", "me.png"], "--photomaker none.bin does not exist"),
        (["--photomaker", "photomaker.safetensors", "--id-image", "me.png", "--model", "model"], "trigger word"),
    ],
)
def test_bad_identity_input_is_one_line_before_torch_loads(files, args, message, monkeypatch):
    monkeypatch.chdir(files)
    prompt = "a photo of a man" if "--photomaker" in args else "a head"
    result, stderr = probe_cli("generate", prompt, *args)
    assert result == {"code": 1, "torch": False, "diffusers": False}, stderr
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) <= 2


def test_photomaker_for_another_base_model_is_refused_before_torch_loads(files, monkeypatch):
    monkeypatch.chdir(files)
    result, stderr = probe_cli("generate", "a photo of a man img", "--photomaker", "photomaker.safetensors",
                               "--id-image", "me.png", "--model", "model")
    assert result == {"code": 1, "torch": False, "diffusers": False}, stderr
    assert "is for another base model: it writes 2048-wide text tokens, model attends to 32" in stderr


def test_an_instantid_run_end_to_end(files, tiny_sd_dir, tiny_sd_prior, tmp_path):
    adapter = instantid_folder(tmp_path / "InstantID", tiny_sd_prior.unet, tiny_sd_dir)
    out = tmp_path / "run"
    result = cli("generate", "a head", "--instantid", str(adapter), "--face-embedding", str(files / "face.npy"),
                 "--id-scale", "0.5", "--model", str(tiny_sd_dir), "--steps", "2", "--out", str(out), "--quiet",
                 "--allow-pickle", *SMALL)
    assert result.returncode == 0, result.stderr
    spec, = yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["guidance"]["conditioners"]
    assert spec["name"] == "instantid" and spec["scale"] == spec["controlnet_scale"] == 0.5
    assert spec["path"] == str((adapter / "ip-adapter.bin").resolve())
    pickled = cli("generate", "a head", "--instantid", str(adapter), "--face-embedding", str(files / "face.npy"),
                  "--model", str(tiny_sd_dir), "--steps", "2", "--out", str(tmp_path / "no"), "--quiet", *SMALL)
    assert pickled.returncode == 1 and "pickled checkpoint" in pickled.stderr and "Traceback" not in pickled.stderr


def test_a_photomaker_run_end_to_end_on_an_sdxl_shaped_model(files, tiny_sdxl_dir, tmp_path):
    from identity_states import photomaker_state
    from ip_adapter_states import save_safetensors

    from dreamsmith.guidance.loading import load_prior

    checkpoint = save_safetensors(photomaker_state(load_prior(tiny_sdxl_dir).unet), tmp_path / "photomaker.safetensors")
    out = tmp_path / "run"
    result = cli("generate", "a photo of a m img", "--photomaker", str(checkpoint), "--id-image",
                 str(files / "me.png"), "--id-image", str(files / "me.png"), "--model", str(tiny_sdxl_dir), "--steps",
                 "2", "--out", str(out), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    spec, = yaml.safe_load((out / "config.yaml").read_text())["stages"][0]["guidance"]["conditioners"]
    assert spec["name"] == "photomaker" and len(spec["images"]) == 2
