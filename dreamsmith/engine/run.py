"""The main job: a prompt in, a run directory with an asset out (resumable)."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from dreamsmith.engine.checkpoint import load_checkpoint, save_checkpoint
from dreamsmith.engine.config import RunConfig, differences, to_dict
from dreamsmith.engine.device import resolve_device
from dreamsmith.engine.export import export_representation
from dreamsmith.engine.image_prompts import aligned_words
from dreamsmith.engine.mesh_input import texture_mesh_notes
from dreamsmith.engine.models import RunPriors
from dreamsmith.engine.presets import default_model
from dreamsmith.engine.previews import preview_grid, write_png
from dreamsmith.engine.run_dir import RunDir, atomic_write, write_json, write_yaml
from dreamsmith.engine.signals import RunInterrupted, deferred_stop_signals
from dreamsmith.engine.stage import Stage
from dreamsmith.engine.threads import follow_load
from dreamsmith.errors import ConfigError, RunDirError
from dreamsmith.guidance import GUIDANCES
from dreamsmith.guidance.conditioner_registry import conditioner_tokens
from dreamsmith.guidance.loading import run_models
from dreamsmith.guidance.prompt_check import check_prompt, image_prompted
from dreamsmith.prompt_images import image_refs, text_words


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
    overwrite: bool = False,
    source: Any = None,
) -> dict[str, Any]:
    """Run every stage of ``config`` into the run directory ``out`` and export the asset.

    prior: an already loaded diffusion prior for the run's model (tests pass exact oracles); by
    default each stage's model (its own ``model``, else ``config.model``, else the preset's) is loaded,
    once per distinct model, before anything is written. resume: continue from ``out``'s last
    checkpoint, which must belong to this run (same prompt, seed and settings). overwrite: replace a
    run already in ``out`` (refused otherwise). The directory is locked for the run; SIGINT and
    SIGTERM stop it at the next step boundary with a checkpoint (:class:`RunInterrupted`). source: the
    asset an edit starts from (an :class:`~dreamsmith.engine.edit_source.EditSource`): the first stage
    starts as it, guidances that need it see its frozen renders, and its record is the run's ``edit.json``
    (a resumed edit must name the same source). Returns the report.
    """
    progress = progress or Progress()
    image_prompt = all(image_prompted(stage.guidance.get("conditioners", [])) for stage in config.stages)
    check_prompt(config.prompt, None, image_prompt)
    for stage_config in config.stages:
        name = stage_config.guidance.get("name", "sds")
        if GUIDANCES[name].needs_source and source is None:
            raise ConfigError(f"stage '{stage_config.name}': guidance {name} edits an existing asset; run "
                              "`dreamsmith edit SOURCE \"INSTRUCTION\"` instead")
    if not resume:  # a resumed texture stage has its geometry in the checkpoint
        for note in texture_mesh_notes(config.stages):
            progress.message(note)
    run_dir = RunDir(out)
    if resume and not run_dir.config.exists():
        run_dir.load_config()  # the one-line "not a run directory" error, before anything is written
    device = resolve_device(config.device)
    priors = RunPriors(config, device, given=prior)
    stage_priors = [priors.for_stage(stage_config) for stage_config in config.stages]
    for stage_config, stage_prior in zip(config.stages, stage_priors, strict=True):
        check_prompt(config.prompt, stage_prior, image_prompt, stage_words(stage_config))
    warnings = (long_prompt_warning(config.prompt, p, stage_words(c), aligned_words(c.guidance.get("conditioners")))
                for c, p in zip(config.stages, stage_priors, strict=True))
    for warning in {w for w in warnings if w}:
        progress.message(warning)
    with run_dir.lock():
        stale = run_dir.remove_stale_temporaries()
        if stale:
            progress.message(f"removed {len(stale)} temporary file(s) an interrupted run left behind")
        state = _resume_state(run_dir, config) if resume else None
        if state is None and run_dir.has_run():
            if not overwrite:
                raise RunDirError(f"{run_dir.root} already holds a run; continue it with --resume, or pass "
                                  "--overwrite to replace it, or choose another --out")
            run_dir.clear_run()
        run_dir.prepare()
        if source is not None:
            source.check_or_write_record(run_dir.edit_record, resumed=state is not None)
        write_yaml(run_dir.config, to_dict(config))
        with run_models(priors.load):
            return _run(config, run_dir, state, device, stage_priors, progress, source)


def _run(config: RunConfig, run_dir: RunDir, state: dict[str, Any] | None, device: torch.device,
         stage_priors: list[Any], progress: Progress, source: Any = None) -> dict[str, Any]:
    generator = torch.Generator(device=device).manual_seed(config.seed)
    reports = [StageReport(stage.name) for stage in config.stages]
    start_stage, start_step, resumed_from = 0, 0, None
    if state is not None:
        start_stage, start_step, resumed_from = state["stage_index"], state["step"], state["global_step"]
        generator.set_state(state["generator_state"].to(generator.device) if device.type == "cuda"
                            else state["generator_state"])
        reports = [StageReport(**r) for r in state["reports"]]

    stage: Stage | None = None
    with deferred_stop_signals() as stop_requested:
        for index in range(start_stage, len(config.stages)):
            stage_config = config.stages[index]
            previous = stage
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed + index)  # parameter initialization is part of "same seed, same asset"
                stage = Stage(stage_config, stage_priors[index], config.prompt, device, config.allow_pickle,
                              source=None if source is None else source.representation)
            first = 0
            if state is not None and index == start_stage:
                stage.load_state_dict(state["stage_state"])
                first = start_step
            elif previous is not None:
                stage.representation.init_from(previous.representation, config.export)
            elif source is not None:
                source.start(stage.representation)
            _run_stage(stage, index, first, config, run_dir, generator, reports, progress, stop_requested)
        signum = stop_requested()
    if signum is not None:
        progress.message("stopped after the last step; the asset is exported when you continue with --resume")
        raise RunInterrupted(signum, config.stages[-1].steps)

    assert stage is not None
    progress.message("extracting the surface")
    mesh = export_representation(stage.representation, config, device, run_dir.root, config.export).mesh
    write_final_preview(stage, run_dir)
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


def write_final_preview(stage: Stage, run_dir: RunDir) -> None:
    """previews/final.png: the last stage's preview of its last step when it wrote one (the same
    deterministic render of the same field), else a new render."""
    last = run_dir.previews / f"{stage.config.name}_{stage.config.steps:06d}.png"
    final = run_dir.previews / "final.png"
    if last.is_file():
        atomic_write(final, lambda temp: shutil.copyfile(last, temp))
    else:
        write_png(final, preview_grid(stage.render_previews()))


def _run_stage(
    stage: Stage,
    index: int,
    first: int,
    config: RunConfig,
    run_dir: RunDir,
    generator: torch.Generator,
    reports: list[StageReport],
    progress: Progress,
    stop_requested: Callable[[], int | None],
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
                "identity": run_identity(config),
            },
        )

    completed = first
    for step in range(first, stage_config.steps):
        if stop_requested() is not None:
            break
        follow_load()
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
        try:
            progress.step(completed, result.loss, result.logs)
        except KeyboardInterrupt:  # a progress callback asking to stop is a stop at this boundary too
            checkpoint(completed)
            raise RunInterrupted(signal.SIGINT, completed) from None
    checkpoint(completed)
    signum = stop_requested()
    if signum is not None and completed < stage_config.steps:
        progress.message(f"interrupted: checkpoint at step {completed}; continue with --resume")
        raise RunInterrupted(signum, completed)
    progress.stage_finished(stage_config.name)


def stage_words(stage_config: Any) -> list[str]:
    """The words a stage's adapters add to its model's vocabulary (``--adapter``)."""
    return conditioner_tokens(stage_config.guidance.get("conditioners") or [])


def long_prompt_warning(prompt: str, prior: Any, new_words: list[str] = (), image_words: int = 0) -> str | None:
    """A warning when the prompt is longer than the model's text encoder reads, else None. ``new_words``
    (an adapter's tokens, not in the tokenizer until the stage loads it) count one token each, a token of n
    vectors (``<tok>`` with ``<tok>_1`` ... among them) n; each of the prompt's ``<image:PATH>`` placeholders
    ``image_words`` tokens (its aligned words)."""
    count = getattr(prior, "prompt_tokens", None)
    if count is None:
        return None
    images = len(image_refs(prompt))
    words = text_words(prompt)
    plain = [word for word in words if word not in new_words]
    used, limit = count(" ".join(plain))
    used += sum(_vector_count(word, new_words) for word in words if word in new_words) + images * image_words
    if used <= limit:
        return None
    return f"warning: the prompt is {used} tokens long; the model reads only the first {limit}"


def _vector_count(token: str, words: list[str]) -> int:
    """1 + how many of diffusers' ``token_1``, ``token_2``, ... follow ``token`` among ``words``."""
    index = 1
    while f"{token}_{index}" in words:
        index += 1
    return index


def _resume_state(run_dir: RunDir, config: RunConfig) -> dict[str, Any]:
    """The last checkpoint of ``run_dir``, checked against ``config`` (only step counts may differ) and
    against the identity of the run that wrote it."""
    saved = run_dir.load_config()
    current = to_dict(config)
    for key in differences(_without_steps(saved), _without_steps(current)):
        raise RunDirError(f"cannot resume: '{key}' differs from the run's config.yaml; resume with the same settings")
    state = load_checkpoint(run_dir.last_checkpoint)
    identity = state.get("identity")
    if identity is not None and identity != run_identity(config):
        raise RunDirError(f"cannot resume: the checkpoint in {run_dir.root} belongs to another run (prompt "
                          f"{identity.get('prompt')!r}, seed {identity.get('seed')}); pass --overwrite to replace it")
    if not 0 <= state.get("stage_index", -1) < len(config.stages):  # equal stage lists: checked above
        raise RunDirError("cannot resume: the checkpoint does not match the run's stages")
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


def run_identity(config: RunConfig) -> dict[str, Any]:
    """What makes a run itself: prompt, seed, and a hash of every setting but the step counts."""
    settings = json.dumps(_without_steps(to_dict(config)), sort_keys=True, default=str)
    return {"prompt": config.prompt, "seed": config.seed,
            "config_hash": hashlib.sha256(settings.encode()).hexdigest()[:16]}
