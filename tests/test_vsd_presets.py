"""The VSD and DreamFlow presets and the engine parts they need: ProlificDreamer's three stages through
the CLI on tiny models, the texture stage's frozen geometry, the geometry stage's normal-map judging,
exact resume of the particle LoRA, and one-line refusals of bad options."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_generate import SMALL, run_cli
from test_guidance_framework import StopAt

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import generate
from dreamsmith.engine.stage import Stage
from dreamsmith.errors import ConfigError, ModelLoadError

sys.path.insert(0, str(Path(__file__).parent))
from oracles import SingleTargetOracle  # noqa: E402

CPU = torch.device("cpu")


def last_stage_trained_its_lora(preset: str, model: Path, out: Path, steps: int, *overrides: str) -> int:
    """Run ``preset`` through the CLI on tiny models; check its GLB and that the last stage's particle LoRA
    trained away from zero; returns the stage index its last checkpoint holds."""
    result = run_cli("generate", "a hamburger", "--preset", preset, "--model", str(model), "--steps", str(steps),
                     "--out", str(out), "--quiet", *SMALL, "dmtet.resolution=12", *overrides)
    assert result.returncode == 0, result.stderr
    assert (out / "asset.glb").stat().st_size > 0
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    loras = state["stage_state"]["guidance"]["loras"]
    assert len(loras) == 1 and any(v.abs().sum() > 0 for k, v in loras[0].items() if "lora_B" in k)
    return state["stage_index"]


@pytest.mark.slow
def test_prolificdreamer_runs_its_four_stages_through_the_cli_on_tiny_models(tiny_sd_dir, tiny_sd_vpred_dir,
                                                                            tmp_path):
    # the texture stage trains its own particle LoRA, on the v-prediction model
    lora = [f"{stage}.guidance.lora_model={tiny_sd_vpred_dir}" for stage in ("coarse", "coarse-512", "texture")]
    assert last_stage_trained_its_lora("prolificdreamer", tiny_sd_dir, tmp_path / "run", 16, *lora) == 3


@pytest.mark.slow
def test_dreamflow_runs_nerf_mesh_and_sdxl_refiner_stages_through_the_cli(tiny_sd_dir, tiny_refiner_dir, tmp_path):
    # the refinement stage's particle LoRA sits on the refiner
    refiner = f"refine.model={tiny_refiner_dir}"
    assert last_stage_trained_its_lora("dreamflow", tiny_sd_dir, tmp_path / "run", 12, refiner) == 2


def texture_stage(*overrides: str) -> Stage:
    config = make_config("a blue cube", preset="toy-mesh",
                         overrides=["fine.dmtet.resolution=12", "preview_every=0", "checkpoint_every=0", *overrides])
    target = torch.zeros(3, 32, 32)
    return Stage(config.stages[1], SingleTargetOracle(target), config.prompt, CPU)


def test_a_dmtet_stage_with_frozen_geometry_trains_only_its_texture():
    stage = texture_stage("fine.dmtet.optimize_geometry=false")
    sdf, deformation = stage.representation.dmtet.sdf.clone(), stage.representation.dmtet.deformation.clone()
    texture = [p.clone() for p in stage.representation.texture.parameters()]
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        stage.step(step, generator)
    assert torch.equal(stage.representation.dmtet.sdf, sdf)
    assert torch.equal(stage.representation.dmtet.deformation, deformation)
    assert any(not torch.equal(a, b) for a, b in zip(texture, stage.representation.texture.parameters(), strict=True))


def test_a_stage_that_judges_normals_moves_the_geometry_not_the_texture():
    stage = texture_stage("fine.shading.guide_normals=true", "fine.loss.lambda_normal_consistency=0",
                          "fine.loss.lambda_sdf_sign=0")
    sdf = stage.representation.dmtet.sdf.clone()
    texture = [p.clone() for p in stage.representation.texture.parameters()]
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        stage.step(step, generator)
    assert not torch.equal(stage.representation.dmtet.sdf, sdf)
    # the albedo never reaches the judged image, so its parameters get no gradient
    assert all(torch.equal(a, b) for a, b in zip(texture, stage.representation.texture.parameters(), strict=True))


@pytest.mark.parametrize("name", ["vsd", "dreamflow"])
def test_the_particle_lora_its_optimizer_and_the_schedule_resume_exactly(name, tiny_sd_dir, tmp_path):
    def config():
        return make_config("a hamburger", model=str(tiny_sd_dir), steps=6, seed=2,
                           overrides=[*SMALL, f"guidance.name={name}", "guidance.view_dependent_prompting=false",
                                      "guidance.lora_warmup_steps=1", "guidance.lora_lr=0.01"])

    generate(config(), tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        generate(config(), tmp_path / "resumed", progress=StopAt(3))
    generate(config(), tmp_path / "resumed", resume=True)
    straight, resumed = (load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["stage_state"]
                         for n in ("straight", "resumed"))
    lora = straight["guidance"]["loras"][0]
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    assert all(torch.equal(v, resumed["guidance"]["loras"][0][k]) for k, v in lora.items())
    assert all(torch.equal(v, resumed["guidance"]["module"][k]) for k, v in straight["guidance"]["module"].items())
    adam = [s["guidance"]["optimizer"]["optimizer"]["state"] for s in (straight, resumed)]
    assert all(torch.equal(adam[0][k]["exp_avg"], adam[1][k]["exp_avg"]) for k in adam[0])
    assert all(torch.equal(straight["field"][k], resumed["field"][k]) for k in straight["field"])


@pytest.mark.parametrize("overrides, message", [
    (["guidance.name=vsd", "guidance.lora_rank=0"], "'stages.0.guidance.lora_rank' must be between 1 and 1024, got 0"),
    (["guidance.name=dreamflow", "guidance.t_start=0.3", "guidance.t_end=0.9"], "must not increase"),
    (["guidance.name=vsd", "guidance.camera_dropout=1.5"], "camera_dropout"),
])
def test_bad_particle_options_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("a red cube", preset="toy", overrides=overrides)


def test_a_lora_model_that_does_not_exist_is_refused_before_the_run(tmp_path):
    result = run_cli("generate", "a red cube", "--preset", "toy-vsd", "--out", str(tmp_path / "run"),
                     f"guidance.lora_model={tmp_path / 'nowhere'}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "nowhere" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_lora_model_naming_the_stage_model_is_the_same_loaded_prior(tiny_sd_dir, pickled_sd_dir):
    from dreamsmith.engine.models import RunPriors
    from dreamsmith.guidance.loading import run_models

    config = make_config("a red cube", preset="dreamfusion",
                         overrides=[f"model={tiny_sd_dir}", "guidance.name=vsd", f"guidance.lora_model={tiny_sd_dir}"])
    priors = RunPriors(config, CPU)
    prior = priors.for_stage(config.stages[0])
    with run_models(priors.load):
        stage = Stage(config.stages[0], prior, config.prompt, CPU)
    assert stage.guidance.particle.model is prior  # loaded once in the run, the particle's adapter on it
    outside = Stage(config.stages[0], prior, config.prompt, CPU)  # no run: a fresh load
    assert outside.guidance.particle.model is not prior
    # --allow-pickle reaches the second model too
    pickled = ["guidance.name=vsd", f"guidance.lora_model={pickled_sd_dir}"]
    config = make_config("a red cube", preset="dreamfusion", overrides=[f"model={tiny_sd_dir}", *pickled])
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        Stage(config.stages[0], prior, config.prompt, CPU)
    stage = Stage(config.stages[0], prior, config.prompt, CPU, allow_pickle=True)
    assert stage.guidance.particle.model is not prior
