"""The main job: a prompt in, a run directory with an asset out (resumable)."""

from __future__ import annotations

import contextlib
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from dreamsmith.engine.checkpoint import load_checkpoint, save_checkpoint
from dreamsmith.engine.config import RunConfig, differences, to_dict
from dreamsmith.engine.device import resolve_device
from dreamsmith.engine.export import export_representation
from dreamsmith.engine.models import RunPriors
from dreamsmith.engine.presets import default_model
from dreamsmith.engine.previews import preview_grid, write_png
from dreamsmith.engine.run_dir import RunDir, write_json, write_yaml
from dreamsmith.engine.stage import Stage
from dreamsmith.errors import RunDirError
from dreamsmith.guidance.prompt_check import check_prompt


class Progress:
    """Receives the run's progress; the CLI shows it, tests and libraries ignore it."""

    def stage_started(self, name: str, start: int, total: int) -> None: ...

    def step(self, step: int, loss: float, logs: dict[str, float]) -> None: ...

    def stage_finished(self, name: str) -> None: ...

    def message(self, text: str) -> None: ...


@dataclass
class StageReport:
    name: str
    steps: int = 0
    wall_time_s: float = 0.0
    final_losses: dict[str, float] = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("dreamsmith", "torch", "diffusers", "transformers", "nerfacc", "trimesh", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def generate(
    config: RunConfig,
    out: Path | str,
    resume: bool = False,
    prior: Any = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every stage of ``config`` into the run directory ``out`` and export the asset.

    prior: an already loaded diffusion prior for the run's model (tests pass exact oracles); by
    default each stage's model (its own ``model``, else ``config.model``, else the preset's) is loaded,
    once per distinct model, before anything runs. resume: continue from ``out``'s last checkpoint.
    Returns the report.
    """
    progress = progress or Progress()
    check_prompt(config.prompt, None)
    run_dir = RunDir(out)
    state = _resume_state(run_dir, config) if resume else None
    device = resolve_device(config.device)
    priors = RunPriors(config, device, given=prior)
    stage_priors = [priors.for_stage(stage_config) for stage_config in config.stages]
    for stage_prior in stage_priors:
        check_prompt(config.prompt, stage_prior)
    run_dir.prepare()
    write_yaml(run_dir.config, to_dict(config))

    generator = torch.Generator(device=device).manual_seed(config.seed)
    reports = [StageReport(stage.name) for stage in config.stages]
    start_stage, start_step, resumed_from = 0, 0, None
    if state is not None:
        start_stage, start_step, resumed_from = state["stage_index"], state["step"], state["global_step"]
        generator.set_state(state["generator_state"].to(generator.device) if device.type == "cuda"
                            else state["generator_state"])
        reports = [StageReport(**r) for r in state["reports"]]

    stage: Stage | None = None
    for index in range(start_stage, len(config.stages)):
        stage_config = config.stages[index]
        previous = stage
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + index)  # parameter initialization is part of "same seed, same asset"
            stage = Stage(stage_config, stage_priors[index], config.prompt, device, config.allow_pickle)
        first = 0
        if state is not None and index == start_stage:
            stage.load_state_dict(state["stage_state"])
            first = start_step
        elif previous is not None:
            stage.representation.init_from(previous.representation, config.export)
        _run_stage(stage, index, first, config, run_dir, generator, reports, progress)

    assert stage is not None
    progress.message("extracting the surface")
    mesh = export_representation(stage.representation, config, device, run_dir.root, config.export).mesh
    previews = stage.render_previews()
    write_png(run_dir.previews / "final.png", preview_grid(previews))
    report = {
        "prompt": config.prompt,
        "preset": config.preset,
        "model": config.model or default_model(config.preset),
        "seed": config.seed,
        "device": str(device),
        "stages": [vars(r) for r in reports],
        "final_losses": reports[-1].final_losses,
        "resumed_from_step": resumed_from,
        "asset": {"path": run_dir.asset.name, "vertices": mesh.n_vertices, "faces": mesh.n_faces},
        "versions": package_versions(),
    }
    write_json(run_dir.report, report)
    return report


def _run_stage(
    stage: Stage,
    index: int,
    first: int,
    config: RunConfig,
    run_dir: RunDir,
    generator: torch.Generator,
    reports: list[StageReport],
    progress: Progress,
) -> None:
    stage_config = stage.config
    report = reports[index]
    progress.stage_started(stage_config.name, first, stage_config.steps)

    def checkpoint(next_step: int) -> None:
        save_checkpoint(
            run_dir.last_checkpoint,
            {
                "stage_index": index,
                "stage_name": stage_config.name,
                "step": next_step,
                "global_step": sum(c.steps for c in config.stages[:index]) + next_step,
                "stage_state": stage.state_dict(),
                "generator_state": generator.get_state().cpu(),
                "reports": [vars(r) for r in reports],
                "config": to_dict(config),
            },
        )

    completed = first
    try:
        with _interrupt_at_step_boundary() as interrupted:
            for step in range(first, stage_config.steps):
                started = time.perf_counter()
                result = stage.step(step, generator)
                report.wall_time_s += time.perf_counter() - started
                completed = report.steps = step + 1
                report.final_losses = {"loss": result.loss, **result.logs}
                if stage_config.preview_every and completed % stage_config.preview_every == 0:
                    preview = preview_grid(stage.render_previews())
                    write_png(run_dir.previews / f"{stage_config.name}_{completed:06d}.png", preview)
                if stage_config.checkpoint_every and completed % stage_config.checkpoint_every == 0:
                    checkpoint(completed)
                progress.step(completed, result.loss, result.logs)
                if interrupted():
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        progress.message(f"interrupted: checkpoint at step {completed}; continue with --resume")
        checkpoint(completed)
        raise
    checkpoint(stage_config.steps)
    progress.stage_finished(stage_config.name)


@contextlib.contextmanager
def _interrupt_at_step_boundary() -> Iterator[Callable[[], bool]]:
    """Defer a first Ctrl-C to the end of the current step, so the checkpoint is a step boundary
    (a second Ctrl-C interrupts at once). Outside the main thread, signals are left alone."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: flag["set"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume_state(run_dir: RunDir, config: RunConfig) -> dict[str, Any]:
    """The last checkpoint of ``run_dir``, checked against ``config`` (only step counts may differ)."""
    saved = run_dir.load_config()
    current = to_dict(config)
    for key in differences(_without_steps(saved), _without_steps(current)):
        raise RunDirError(f"cannot resume: '{key}' differs from the run's config.yaml; resume with the same settings")
    state = load_checkpoint(run_dir.last_checkpoint)
    for index, (old, new) in enumerate(zip(saved["stages"], current["stages"], strict=True)):
        if index < state["stage_index"] and old["steps"] != new["steps"]:
            raise RunDirError(f"cannot resume: stage '{new['name']}' is finished; only later stages' steps may change")
    if state["step"] > config.stages[state["stage_index"]].steps:
        raise RunDirError(
            f"cannot resume: the checkpoint is at step {state['step']} of stage '{state['stage_name']}', "
            f"beyond the {config.stages[state['stage_index']].steps} steps asked for"
        )
    return state


def _without_steps(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "stages": [{k: v for k, v in s.items() if k != "steps"} for s in config["stages"]]}
