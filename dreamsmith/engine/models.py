"""The diffusion priors of a run: each stage's model (its own, or the run's), loaded once per model."""

from __future__ import annotations

from typing import Any

import torch

from dreamsmith.engine.config import RunConfig, StageConfig
from dreamsmith.engine.presets import default_model, resolve_model


class RunPriors:
    """Loads each distinct model of a run once; ``given`` is a prior already loaded for the run's own
    model (tests pass exact oracles), used by every stage that names no model of its own."""

    def __init__(self, config: RunConfig, device: torch.device, given: Any = None) -> None:
        self.config = config
        self.device = device
        self.given = given
        self.loaded: dict[str, Any] = {}

    def model_name(self, stage: StageConfig) -> str:
        """The model a stage uses: its own, else the run's, else the preset's default."""
        return stage.model or self.config.model or default_model(self.config.preset)

    def for_stage(self, stage: StageConfig) -> Any:
        """The stage's prior, loading it the first time its model is asked for."""
        if stage.model is None and self.given is not None:
            return self.given
        return self.load(self.model_name(stage))

    def load(self, name: str) -> Any:
        """The run's copy of model ``name`` (a folder, hub id or ``embedded:`` name), loaded the first time;
        also what guidances asking for a model by name get during the run (``run_models``)."""
        folder = resolve_model(name)
        if folder not in self.loaded:
            from dreamsmith.guidance import load_prior

            self.loaded[folder] = load_prior(folder, device=self.device, allow_pickle=self.config.allow_pickle)
        return self.loaded[folder]
