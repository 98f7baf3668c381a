"""The mvdream and toy-mv presets: threestudio's schedule, an end-to-end run on a tiny converted checkpoint,
and the models they are refused with before anything loads."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from test_cli_usage import run_cli as run_cli_probe
from test_convert_mvdream import tiny_checkpoint, tiny_config
from test_generate import SMALL, run_cli

from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.presets import embedded_model_path, resolve_model
from dreamsmith.schedules import schedule_value


def test_the_mvdream_preset_is_threestudios_schedule(tiny_mv_dir, monkeypatch):
    monkeypatch.setenv("DREAMSMITH_MEMORY_BUDGET", "1T")
    coarse, fine = make_config("a red cube", preset="mvdream", model=str(tiny_mv_dir)).stages
    assert (coarse.steps, fine.steps) == (5000, 5000)
    assert (coarse.camera.resolution, coarse.camera.batch_size) == (64, 8)
    assert (fine.camera.resolution, fine.camera.batch_size) == (256, 4)
    for stage in (coarse, fine):
        assert stage.guidance["name"] == "mvdream" and stage.guidance["guidance_scale"] == 50.0
        assert stage.guidance["recon_std_rescale"] == 0.5
    for step in range(0, 10000, 250):  # the run's step -> the stage's own step
        stage, local = (coarse, step) if step < 5000 else (fine, step - 5000)
        fraction = min(step / 8000, 1.0)
        low = schedule_value(stage.guidance["min_step_percent"], local)
        high = schedule_value(stage.guidance["max_step_percent"], local)
        assert low == pytest.approx(0.98 + (0.02 - 0.98) * fraction, abs=1e-9)
        assert high == pytest.approx(0.98 + (0.50 - 0.98) * fraction, abs=1e-9)


def test_the_mvdream_preset_runs_end_to_end_through_the_cli_on_a_tiny_converted_checkpoint(tiny_sd_dir, tmp_path):
    model = tmp_path / "tiny-mvdream"
    converted = run_cli("convert", "mvdream", str(tiny_checkpoint(tmp_path)), str(model), "--base", str(tiny_sd_dir),
                        "--config", str(tiny_config(tmp_path)))
    assert converted.returncode == 0, converted.stderr
    out = tmp_path / "run"
    result = run_cli("generate", "a red cube", "--preset", "mvdream", "--model", str(model), "--steps", "4",
                     "--out", str(out), "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    assert (out / "asset.glb").stat().st_size > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert [s["guidance"]["name"] for s in config["stages"]] == ["mvdream", "mvdream"]
    report = json.loads((out / "report.json").read_text())
    assert [s["steps"] for s in report["stages"]] == [2, 2]


def test_a_multi_view_preset_with_a_single_view_model_is_refused_before_torch_loads(tiny_sd_dir):
    result, stderr = run_cli_probe("generate", "a red cube", "--preset", "mvdream", "--model", str(tiny_sd_dir))
    assert result == {"code": 1, "torch": False, "diffusers": False}
    assert "guidance mvdream needs a multi-view model that denoises 4 views" in stderr
    assert "dreamsmith convert" in stderr and "Traceback" not in stderr


def test_a_multi_view_model_with_a_single_view_preset_is_refused_before_torch_loads(tiny_mv_dir):
    result, stderr = run_cli_probe("generate", "a red cube", "--preset", "toy", "--model", str(tiny_mv_dir))
    assert result == {"code": 1, "torch": False, "diffusers": False}
    assert "is a multi-view model (4 views together)" in stderr and "guidance.name=mvdream" in stderr


def test_the_mvdream_preset_without_a_model_says_how_to_convert_the_checkpoint():
    result, stderr = run_cli_probe("generate", "a red cube", "--preset", "mvdream")
    assert result == {"code": 1, "torch": False, "diffusers": False}
    assert "MVDream/MVDream publishes a checkpoint in another layout" in stderr
    assert "dreamsmith convert mvdream sd-v2.1-base-4view.pt OUT_DIR --allow-pickle" in stderr


def test_the_embedded_toyworld_mv_loads_as_a_four_view_prior_over_toyworld():
    from dreamsmith.guidance.loading import load_prior

    folder, base_folder = embedded_model_path("toyworld-mv"), embedded_model_path("toyworld")
    assert sorted(p.name for p in (folder / "unet").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert not (folder / "text_encoder").exists()  # a delta: the base's text encoder, tokenizer and scheduler
    prior, base = load_prior(resolve_model("embedded:toyworld-mv")), load_prior(base_folder)
    assert prior.views_per_group == 4 and base.views_per_group == 1
    assert prior.camera_conditioning == base.camera_conditioning == "c2w16+rays" and prior.image_size == 32
    for name, p in base.text_encoder.state_dict().items():
        assert torch.equal(prior.text_encoder.state_dict()[name], p), name
    assert torch.equal(prior.alphas_cumprod, base.alphas_cumprod)
    weights = [f for f in folder.parent.rglob("*") if f.suffix == ".safetensors"]
    assert sum(f.stat().st_size for f in weights) <= 60 * 10**6  # TOYWORLD.md: everything shipped together


def test_an_embedded_model_that_is_not_shipped_is_refused_in_one_line_naming_the_shipped_ones():
    result, stderr = run_cli_probe("generate", "a purple torus", "--model", "embedded:toyworld-xl")
    assert result == {"code": 1, "torch": False, "diffusers": False}
    assert "the embedded model 'toyworld-xl' is not shipped" in stderr
    shipped = stderr.split("(shipped: ", 1)[1].split(")", 1)[0].split(", ")
    assert {"toyworld", "toyworld-mv"} <= set(shipped)  # the priors (model_index.json), not adapters or ControlNets
    assert len(stderr.strip().splitlines()) <= 2


def test_toy_mv_runs_end_to_end_through_the_cli_on_the_shipped_model(tmp_path):
    out = tmp_path / "run"
    result = run_cli("generate", "a purple torus", "--preset", "toy-mv", "--steps", "4", "--out", str(out),
                     "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    assert (out / "asset.glb").stat().st_size > 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    (stage,) = config["stages"]
    assert stage["guidance"]["name"] == "mvdream" and stage["camera"]["batch_size"] == 4
    assert config["model"].endswith("toyworld-mv")


def test_toy_mv_runs_the_toy_stage_with_mvdream_guidance(tiny_mv_dir):
    (stage,) = make_config("a purple torus", preset="toy-mv", model=str(tiny_mv_dir)).stages
    assert stage.guidance["name"] == "mvdream" and stage.camera.batch_size == 4 and stage.steps == 400
