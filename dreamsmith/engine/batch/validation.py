"""Check every job of a manifest before anything runs: its config builds (``make_config``, so a bad
override or preset is caught), its export options are usable, and a closed-vocabulary model (the
embedded prior) knows its prompt."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace

from dreamsmith.engine.batch.manifest import JobSpec, Manifest, RowProblem
from dreamsmith.engine.config import RunConfig
from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.presets import default_model, resolve_model
from dreamsmith.engine.run import stage_words
from dreamsmith.errors import DreamsmithError
from dreamsmith.exporters.pipeline import check_options
from dreamsmith.guidance.priors import METADATA_FILE
from dreamsmith.guidance.prompt_check import check_prompt


def job_config(spec: JobSpec, device: str | None = None) -> RunConfig:
    """The job's run config (``device``: the executor's choice; None keeps the preset's)."""
    return make_config(spec.prompt, spec.preset, spec.model, spec.steps, spec.seed, device, spec.config_overrides())


def validate(manifest: Manifest) -> Manifest:
    """Move every job whose config, export options or prompt cannot be used into ``manifest.problems``."""
    valid = []
    for spec in manifest.jobs:
        try:
            config = job_config(spec)
            check_options(config.export)
            for stage in config.stages:
                model = stage.model or config.model or default_model(config.preset)
                check_prompt(spec.prompt, SimpleNamespace(known_prompts=_known_prompts(resolve_model(model))),
                             new_words=stage_words(stage))
        except DreamsmithError as error:
            manifest.problems.append(RowProblem(spec.line, f"job '{spec.id}': {error}"))
            continue
        valid.append(spec)
    manifest.jobs = valid
    return manifest


@cache
def _known_prompts(model: str) -> tuple[str, ...] | None:
    """The captions a local model declares in its metadata (None: any prompt), read without loading it."""
    metadata = Path(model) / METADATA_FILE
    if not metadata.is_file():
        return None
    try:
        known = json.loads(metadata.read_text()).get("known_prompts")
    except (OSError, json.JSONDecodeError):
        return None  # the loader reports an unreadable metadata file when the job runs
    return tuple(known) if known else None
