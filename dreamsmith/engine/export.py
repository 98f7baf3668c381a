"""Export a finished run directory: rebuild its final stage's representation from the last checkpoint,
extract the surface and run the exporter pipeline (``dreamsmith export``; ``generate`` at its end)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from dreamsmith.configs import build
from dreamsmith.engine.checkpoint import load_checkpoint
from dreamsmith.engine.config import RunConfig
from dreamsmith.engine.device import resolve_device
from dreamsmith.engine.run_dir import RunDir
from dreamsmith.engine.stages import REPRESENTATIONS
from dreamsmith.errors import ConfigError, RunDirError
from dreamsmith.exporters.pipeline import ExportOptions, ExportResult, check_options, check_writable, export_mesh


def load_run(run_dir: RunDir) -> tuple[RunConfig, dict[str, Any]]:
    """The run's config and its last checkpoint, which must hold the last stage's final step."""
    if not run_dir.root.is_dir():
        raise RunDirError(f"{run_dir.root} is not a directory; pass the run directory that generate wrote")
    try:
        # build, not resolve: export needs the stages' shapes only, and must read runs written before
        # later validation rules (stage names, guidance options) existed
        config = build(RunConfig, run_dir.load_config())
    except (ConfigError, yaml.YAMLError, AttributeError, TypeError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirError(f"{run_dir.config} is not a valid run config ({detail})") from None
    if not config.stages or config.stages[-1].representation not in REPRESENTATIONS:
        raise RunDirError(f"{run_dir.config} has no last stage this version can export "
                          f"(representations: {', '.join(REPRESENTATIONS)})")
    state = load_checkpoint(run_dir.last_checkpoint)
    last = len(config.stages) - 1
    index, step = state.get("stage_index"), state.get("step")
    if not isinstance(index, int) or not isinstance(step, int) or "stage_state" not in state:
        raise RunDirError(f"checkpoint {run_dir.last_checkpoint} is damaged (no stage and step); "
                          "delete it to start over")
    if index < last or step < config.stages[last].steps:
        stage = config.stages[min(index, last)]
        raise RunDirError(
            f"the run in {run_dir.root} has not finished: its checkpoint is at step {step} of {stage.steps} of stage "
            f"'{stage.name}' ({index + 1} of {last + 1}); finish it with "
            f"`dreamsmith generate ... --resume --out {run_dir.root}`"
        )
    return config, state


def final_representation(config: RunConfig, state: dict[str, Any], device: torch.device) -> Any:
    """The last stage's representation with the checkpoint's parameters."""
    stage_config = config.stages[-1]
    representation = REPRESENTATIONS[stage_config.representation](stage_config, device)
    try:
        representation.load_state_dict(state["stage_state"])
    except (KeyError, RuntimeError) as error:
        detail = str(error).splitlines()[0]
        raise RunDirError(f"the checkpoint does not match the run's config.yaml ({detail[:200]})") from None
    return representation


def export_run(
    run_dir: Path | str,
    formats: tuple[str, ...] | list[str] = ("glb",),
    texture_size: int = 1024,
    max_triangles: int | None = None,
    lods: int = 0,
    origin: str = "center",
    scale: float | None = None,
    align_yaw: bool = True,
    surface_colour: str = "seen",
    out: Path | str | None = None,
    profile: str = "pc",
    preview_resolution: int = 256,
    device: str = "auto",
) -> ExportResult:
    """Export the finished run in ``run_dir`` into ``out`` (default: the run directory itself).

    Writes ``asset.<format>`` per format, ``asset_lod<k>.*`` per LOD, ``qa.json`` and the previews
    (see ``exporters.pipeline.export_mesh``). Every mistake (bad options, no finished stage, a damaged
    checkpoint, an unwritable ``out``) is a one-line ``DreamsmithError`` raised before anything is written.
    """
    options = ExportOptions(formats=tuple(formats), texture_size=texture_size, max_triangles=max_triangles, lods=lods,
                            origin=origin, scale=scale, align_yaw=align_yaw, surface_colour=surface_colour,
                            profile=profile, preview_resolution=preview_resolution)
    check_options(options)
    run = RunDir(run_dir)
    config, state = load_run(run)
    out_dir = Path(out) if out is not None else run.root
    check_writable(out_dir)
    torch_device = resolve_device(device)
    representation = final_representation(config, state, torch_device)
    return export_representation(representation, config, torch_device, out_dir, options)


def export_representation(representation: Any, config: RunConfig, device: torch.device, out_dir: Path | str,
                          options: ExportOptions) -> ExportResult:
    """Export a live representation (``generate`` passes its final stage's): surface by the
    representation's own extraction, albedo baked from its field, the run's prompt in the metadata."""
    with torch.no_grad():
        mesh = representation.export_mesh(config.export)
    extras = {"prompt": config.prompt, "preset": config.preset, "seed": config.seed, "model": config.model or ""}
    # a volume representation (NeRF) also gives its density: the bake reads the colour it shows
    density = getattr(representation, "density", None)
    return export_mesh(mesh, representation.albedo, out_dir, replace(options, extras=extras), density=density)
