"""A guidance written only against the distillation core gets, without touching the engine: its own
optimizer (a LoRA on the shared prior, checkpointed and resumed exactly), a scheduled timestep the
engine honours, and two stacked attention processors. Also: N-way CFG, timestep schedules, per-stage
models and typed configs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from test_generate import SMALL

from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import Progress, generate
from dreamsmith.errors import ConfigError
from dreamsmith.guidance import GUIDANCES
from dreamsmith.guidance.attention import AttentionHook
from dreamsmith.guidance.conditioners import Conditioner
from dreamsmith.guidance.distillation import DistillationConfig, DistillationGuidance, DistillationState
from dreamsmith.guidance.lora import LoRAConditioner
from dreamsmith.guidance.math import add_noise, alpha_sigma, cfg_chain, cfg_combine
from dreamsmith.guidance.timesteps import (
    ScheduledTimestep,
    TimestepScheduleConfig,
    check_timestep_schedule,
    sample_group_timesteps,
    scheduled_timestep,
)
from dreamsmith.guidance.training import GuidanceOptimConfig, GuidanceOptimizer


class CountingHook(AttentionHook):
    def __init__(self) -> None:
        self.calls = 0

    def output(self, attn, hidden_states, context):
        self.calls += 1
        return hidden_states


class TwoHooks(Conditioner):
    def __init__(self) -> None:
        self.first, self.second = CountingHook(), CountingHook()

    def attention_hooks(self, context):
        return [self.first, self.second]


SCHEDULE = TimestepScheduleConfig(t_start=0.9, t_end=0.3, levels=3, updates_per_level=2)


@dataclass
class ConstantTargetConfig(DistillationConfig):
    """A throwaway method: pull ε̂ towards 0, with an own LoRA fitted to the renders' noise."""


class ConstantTarget(DistillationGuidance):
    config_class = ConstantTargetConfig
    timestep_mode = "scheduled"

    def __init__(self, prior, config, conditioners=()):
        super().__init__(prior, config, conditioners)
        self.lora = "constant-target"
        parameters = self.add_own_lora(self.lora, rank=2)
        self.own_optimizer = GuidanceOptimizer(parameters, GuidanceOptimConfig(lr=0.05, warmup_steps=2))
        self.hooks = TwoHooks()
        self.conditioners.append(self.hooks)
        self.seen: list[tuple[int, int]] = []

    def timestep(self, step):
        return scheduled_timestep(SCHEDULE, step, self.prior.num_train_timesteps)

    def target(self, state: DistillationState):
        self.seen.append((state.step, int(state.t[0])))
        return torch.zeros_like(state.noise)

    def training_loss(self, render, cameras, step, generator, output):
        z, t = output.latents, output.timesteps  # reused from the forward pass: nothing encoded twice
        noise = torch.randn(z.shape, generator=generator)
        alpha, sigma = alpha_sigma(self.prior.alphas_cumprod, t)
        embeds = self.prompts.text_embeddings(self.config.prompt, [None] * len(cameras))
        eps = self.prior.predict_noise(add_noise(z, noise, alpha, sigma), t, embeds, cameras,
                                       conditioners=[LoRAConditioner(self.lora)], enable_grad=True)
        return torch.nn.functional.mse_loss(eps, noise)


@pytest.fixture
def constant_target(monkeypatch):
    monkeypatch.setitem(GUIDANCES, "constant-target", ConstantTarget)
    built: list[ConstantTarget] = []
    original = ConstantTarget.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(ConstantTarget, "__init__", record)
    return built


def throwaway_config(model, steps):
    return make_config("a hamburger", model=str(model), steps=steps, seed=4,
                       overrides=[*SMALL, "guidance.name=constant-target", "guidance.view_dependent_prompting=false"])


class StopAt(Progress):
    def __init__(self, step: int) -> None:
        self.at = step

    def step(self, step, loss, logs):
        if step == self.at:
            raise KeyboardInterrupt


def test_a_new_guidance_trains_its_own_lora_on_a_schedule_with_two_stacked_hooks(tiny_sd_dir, tmp_path,
                                                                               constant_target):
    report = generate(throwaway_config(tiny_sd_dir, 6), tmp_path / "straight")
    guidance = constant_target[-1]
    # the engine honoured the schedule: 2 updates per level, levels 0.9 -> 0.3 of T in 3 steps
    assert guidance.seen == [(0, 900), (1, 900), (2, 700), (3, 700), (4, 500), (5, 500)]
    assert guidance.hooks.first.calls == guidance.hooks.second.calls > 0
    # its own optimizer trained its LoRA (not the asset's Adam) and its state is in the checkpoint
    assert guidance.own_optimizer.updates == 6 and report["final_losses"]["loss_guidance_own"] > 0
    state = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["stage_state"]
    loras = state["guidance"]["loras"][0]
    assert loras and any(v.abs().sum() > 0 for k, v in loras.items() if "lora_B" in k)
    assert state["guidance"]["optimizer"]["updates"] == 6
    asset_params = {id(p) for group in state["optimizer"]["param_groups"] for p in group["params"]}
    assert len(asset_params) == sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert all(group["name"] != "guidance" for group in state["optimizer"]["param_groups"])


def test_a_guidance_lora_and_its_optimizer_resume_exactly(tiny_sd_dir, tmp_path, constant_target):
    generate(throwaway_config(tiny_sd_dir, 6), tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        generate(throwaway_config(tiny_sd_dir, 6), tmp_path / "resumed", progress=StopAt(3))
    generate(throwaway_config(tiny_sd_dir, 6), tmp_path / "resumed", resume=True)
    assert constant_target[-1].seen == [(3, 700), (4, 500), (5, 500)]
    straight, resumed = (load_checkpoint(tmp_path / n / "checkpoints" / "last.pt")["stage_state"]
                         for n in ("straight", "resumed"))
    for name, tensor in straight["guidance"]["loras"][0].items():
        assert torch.equal(tensor, resumed["guidance"]["loras"][0][name]), name
    adam = [straight["guidance"]["optimizer"]["optimizer"]["state"],
            resumed["guidance"]["optimizer"]["optimizer"]["state"]]
    assert adam[0].keys() == adam[1].keys()
    assert all(torch.equal(adam[0][k]["exp_avg"], adam[1][k]["exp_avg"]) for k in adam[0])
    assert all(torch.equal(straight["field"][k], resumed["field"][k]) for k in straight["field"])


def test_cfg_chain_is_n_way_classifier_free_guidance():
    generator = torch.Generator().manual_seed(0)
    uncond, image, full = (torch.randn(2, 4, 4, 4, generator=generator) for _ in range(3))
    assert torch.equal(cfg_chain([uncond, full], [7.5]), cfg_combine(full, uncond, 7.5))
    expected = uncond + 1.5 * (image - uncond) + 7.5 * (full - image)  # InstructPix2Pix, eq. 3
    torch.testing.assert_close(cfg_chain([uncond, image, full], [1.5, 7.5]), expected)
    torch.testing.assert_close(cfg_chain([uncond, image, full], [1.0, 1.0]), full)  # s_I = s_T = 1: ε(z, I, T)
    with pytest.raises(ValueError, match="3 branches need 2 scales"):
        cfg_chain([uncond, image, full], [1.0])


def test_timestep_schedules_never_increase_and_groups_share_t():
    times = [scheduled_timestep(SCHEDULE, step, 1000) for step in range(10)]
    assert times[:6] == [ScheduledTimestep(900, 700)] * 2 + [ScheduledTimestep(700, 500)] * 2 + \
        [ScheduledTimestep(500, 300)] * 2
    assert times[6:] == [ScheduledTimestep(500, 300)] * 4  # held at the last level
    assert all(a.t >= b.t for a, b in zip(times, times[1:], strict=False))
    with pytest.raises(ConfigError, match="must not increase"):
        check_timestep_schedule(TimestepScheduleConfig(t_start=0.2, t_end=0.8), "guidance.schedule")
    grouped = sample_group_timesteps(8, 4, 0.02, 0.98, 1000, torch.Generator().manual_seed(3))
    assert grouped[:4].unique().numel() == 1 and grouped[4:].unique().numel() == 1
    single = sample_group_timesteps(3, 1, 0.02, 0.98, 1000, torch.Generator().manual_seed(3))
    from dreamsmith.guidance.math import sample_timesteps

    assert torch.equal(single, sample_timesteps(3, 0.02, 0.98, 1000, torch.Generator().manual_seed(3)))


def test_guidance_optimizer_keeps_fp32_parameters_and_warms_up():
    parameter = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
    optimizer = GuidanceOptimizer([parameter], GuidanceOptimConfig(lr=0.1, warmup_steps=4))
    assert parameter.dtype == torch.float32 and optimizer.lr == pytest.approx(0.025)
    for _ in range(5):
        optimizer.step((parameter**2).sum())
    assert optimizer.lr == pytest.approx(0.1) and optimizer.updates == 5
    restored = GuidanceOptimizer([torch.nn.Parameter(parameter.detach().clone())], GuidanceOptimConfig(lr=0.1,
                                                                                                       warmup_steps=4))
    restored.load_state_dict(optimizer.state_dict())
    assert restored.updates == 5 and restored.lr == optimizer.lr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("guidance.prompt=a dog", "the prompt is the run's"),
        ("guidance.weighting=sigma", "unknown weighting 'sigma' in 'stages.0.guidance.weighting'; choose one of sds"),
        ("guidance.conditioners=[{name: controlnett}]", "unknown conditioner 'controlnett'.*did you mean 'controlnet'"),
        ("guidance.conditioners=[{name: controlnet}]", "'stages.0.guidance.conditioners.0.model' is required"),
        ("guidance.conditioners=[{name: controlnet, model: x, source: rgb}]", "unknown source 'rgb'"),
        ("guidance.conditioners=[{name: lora, path: x, scal: 1}]", "unknown config key.*scal"),
        ("representation=mesh", "unknown representation 'mesh'"),
    ],
)
def test_guidance_options_are_typed_and_checked_before_any_model_loads(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        make_config("a red cube", model=str(tmp_path / "no-model-needed"), overrides=[override])


def test_stages_naming_the_same_model_load_it_once(tiny_sd_dir, monkeypatch):
    from dreamsmith.engine import models

    loads = []
    real = __import__("dreamsmith.guidance", fromlist=["load_prior"]).load_prior

    def counting(folder, **kwargs):
        loads.append(folder)
        return real(folder, **kwargs)

    monkeypatch.setattr("dreamsmith.guidance.load_prior", counting)
    config = make_config("a hamburger", preset="magic3d", model=str(tiny_sd_dir),
                         overrides=[f"fine.model={tiny_sd_dir}"])
    priors = models.RunPriors(config, torch.device("cpu"))
    coarse, fine = (priors.for_stage(stage) for stage in config.stages)
    assert coarse is fine and len(loads) == 1
    assert config.stages[1].model == str(tiny_sd_dir) and config.stages[0].model is None
