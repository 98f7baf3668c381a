"""From what a user typed to a validated ``RunConfig``."""

from __future__ import annotations

from typing import Any

from dreamsmith.configs import build
from dreamsmith.engine.config import RunConfig, apply_overrides, deep_merge, resolve
from dreamsmith.engine.image_prompts import with_prompt_images
from dreamsmith.engine.memory import check_memory
from dreamsmith.engine.presets import (
    check_model,
    check_model_fits,
    default_model,
    load_preset,
    preset_for_model,
    resolve_model,
)
from dreamsmith.errors import ConfigError


def make_config(
    prompt: str,
    preset: str | None = None,
    model: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """The run's config: the preset, then the options, then ``key=value`` overrides.

    steps: the steps of the whole run, split over the stages in the preset's proportions (the last
    stage takes what rounding leaves); ``<stage>.steps=N`` overrides set one stage.
    A config that cannot fit in the memory budget (:mod:`dreamsmith.engine.memory`) is refused.
    """
    if steps is not None and steps < 0:
        raise ConfigError(f"--steps must be >= 0, got {steps}")
    preset = preset or preset_for_model(model)
    raw = load_preset(preset)
    raw.pop("description", None)
    preset_model = raw.pop("model", None)
    raw = deep_merge(raw, {"prompt": prompt, "preset": preset, "model": model or preset_model})
    if seed is not None:
        raw["seed"] = seed
    if device is not None:
        raw["device"] = device
    if steps is not None:
        for stage, count in zip(raw["stages"], split_steps(steps, [s.get("steps", 0) for s in raw["stages"]]),
                                strict=True):
            stage["steps"] = count
    raw = apply_overrides(raw, list(overrides))
    raw = with_prompt_images(raw, preset_model or "")
    guidance_overridden = any(text.split("=", 1)[0].split(".")[:2].count("guidance") for text in overrides)
    return validated(raw, models_first=not guidance_overridden)


def validated(raw: dict[str, Any], models_first: bool) -> RunConfig:
    """The ``RunConfig`` of a merged raw config, its models checked and its memory need against the budget.

    Config errors come before a missing model. Validating the guidance section needs the guidance
    registry (torch), but a guidance section the code wrote itself (a preset's, an edit's) is valid:
    ``models_first`` checks the models before it, after the torch-free checks, so a usage error never
    waits for torch.
    """
    if models_first:
        check_models(build(RunConfig, raw))
    config = resolve(raw)
    if not models_first:
        check_models(config)
    check_memory(config, resolve_model(config.model))
    return config


def check_models(config: RunConfig) -> None:
    """The run's and every stage's models (its own, and a guidance's second model such as VSD's
    ``lora_model``): an existing folder or a Hugging Face id, and one that sees as many views at once as
    the stage's guidance needs (no loading)."""
    stage_models = {stage.model for stage in config.stages}
    guidance_models = {stage.guidance.get("lora_model") for stage in config.stages}
    for name in sorted({config.model, *stage_models, *guidance_models} - {None}):
        check_model(name)
    for stage in config.stages:
        model = stage.model or config.model or default_model(config.preset)
        check_model_fits(model, stage.guidance.get("name", "sds"), f"stage '{stage.name}'")


def split_steps(total: int, proportions: list[int]) -> list[int]:
    """``total`` steps over stages in the given proportions (each rounded down, the last takes the rest)."""
    weight = sum(proportions)
    if weight <= 0:
        return [0] * (len(proportions) - 1) + [total]
    counts = [total * p // weight for p in proportions[:-1]]
    return [*counts, total - sum(counts)]
