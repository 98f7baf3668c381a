"""The run's configuration: dataclasses, filled from a preset (YAML) and ``key=value`` overrides.

A run is a list of stages; each stage has its representation, renderer, cameras, guidance, optimizer
and losses. Overrides address a field of the run (``seed=3``, ``export.isosurface_resolution=64``),
a field of every stage (``guidance.guidance_scale=50``, ``steps=2000``) or a field of one stage by
its name (``coarse.camera.resolution=32``). An unknown key is an error naming the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml

from dreamsmith.configs import Range, build, nearest, valid_keys
from dreamsmith.engine.part_configs import CameraConfig, LossConfig, OptimConfig, ShadingConfig
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.exporters.options import ExportOptions
from dreamsmith.paths import safe_name
from dreamsmith.renderers.configs import MeshRendererConfig, VolumeRendererConfig
from dreamsmith.representations.configs import BackgroundConfig, DMTetConfig, NeRFConfig, TextureConfig


@dataclass
class StageConfig:
    name: str = "coarse"
    """Name of the stage (used in logs, checkpoints and per-stage overrides)."""
    steps: Annotated[int, Range(0, 10_000_000)] = 10000
    """Optimization steps of this stage."""
    representation: Literal["nerf", "dmtet", "texture"] = "nerf"
    """What is optimized: nerf (a NeRF field), dmtet (a DMTet surface textured by the nerf field's albedo)
    or texture (a UV texture on fixed geometry: ``uv_texture.mesh`` or the previous stage's DMTet surface)."""
    model: str | None = None
    """This stage's own diffusion model (a folder, a Hugging Face id or embedded:NAME); null: the run's.
    Stages naming the same model share one loaded copy."""
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    """The NeRF field (representation nerf), or the texture field (dmtet: must match the NeRF stage before)."""
    dmtet: DMTetConfig = field(default_factory=DMTetConfig)
    """The DMTet grid (representation dmtet)."""
    uv_texture: TextureConfig = field(default_factory=TextureConfig)
    """The fixed mesh and its UV texture (representation texture)."""
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    """The background."""
    renderer: VolumeRendererConfig = field(default_factory=VolumeRendererConfig)
    """The volume renderer (representation nerf)."""
    mesh_renderer: MeshRendererConfig = field(default_factory=MeshRendererConfig)
    """The mesh rasterizer (representation dmtet); its ambient and diffuse come from ``shading``."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Training and preview cameras."""
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    """Random shading modes and lights."""
    guidance: dict[str, Any] = field(default_factory=lambda: {"name": "sds"})
    """The guidance method (``name``) and its options (see ``dreamsmith presets``)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning rates."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Regularizer weights."""
    preview_every: Annotated[int, Range(0, None)] = 500
    """Steps between preview grids (0: only at the end)."""
    checkpoint_every: Annotated[int, Range(0, None)] = 250
    """Steps between checkpoints (the last is kept; one is always written at the end)."""


@dataclass
class ExportConfig(ExportOptions):
    """What leaves a run: the exporters' options plus how the surface is extracted from a field."""

    formats: tuple[str, ...] = ("glb",)
    """Files written at the end of generate: any of glb, gltf, obj, usdz."""
    isosurface_resolution: Annotated[int, Range(8, 512)] = 128
    """Marching-cubes grid cells per side."""
    isosurface_threshold: float | str = 25.0
    """Density at the extracted surface, or "auto": the density whose silhouettes best match the NeRF's
    rendered opacity (faint fields export, haze does not)."""
    isosurface_smoothing: Annotated[float, Range(0, 16)] = 0.0
    """Gaussian blur of the density grid before marching cubes (standard deviation in cells)."""


@dataclass
class RunConfig:
    prompt: str = ""
    """The text prompt."""
    preset: str = "dreamfusion"
    """The preset the run started from."""
    model: str | None = None
    """Diffusion model: a local diffusers folder or a Hugging Face id (None: the preset's default)."""
    seed: Annotated[int, Range(0, 2**63 - 1)] = 0
    """Seed of the run's random generator."""
    device: str = "auto"
    """auto, cpu or cuda."""
    allow_pickle: bool = False
    """Allow loading pickled (.bin/.ckpt) weights; only for models you trust."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """The stages, run in order, each initialized from the one before."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """How the final asset is extracted."""


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(config))))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=value"`` -> ``("a.b", value)`` with the value parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"override {text!r}: cannot parse the value ({problem})") from None
    return key, value


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def guidance_keys(guidance: dict[str, Any], path: str) -> list[str]:
    """Valid dotted keys of a stage's guidance section."""
    from dreamsmith.guidance import GUIDANCES

    config_class = GUIDANCES.get(guidance.get("name", ""))
    names = ["name"] + ([] if config_class is None else valid_keys(config_class.config_class))
    return [f"{path}{k}" for k in names]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge ``key=value`` overrides into a raw run config (a dict with a ``stages`` list)."""
    stage_names = [stage.get("name", "") for stage in raw.get("stages", [])]
    run_keys = [k for k in valid_keys(RunConfig) if not k.startswith("stages")]
    stage_keys = [k for k in valid_keys(StageConfig) if not k.startswith("guidance")]
    for text in overrides:
        key, value = parse_override(text)
        head, _, rest = key.partition(".")
        if head in stage_names and rest:
            targets, stage_key = [stage_names.index(head)], rest
        elif head in {k.split(".")[0] for k in stage_keys} or head == "guidance":
            targets, stage_key = list(range(len(stage_names))), key
        else:
            if key not in run_keys:
                candidates = run_keys + stage_keys + ["guidance." + k for k in ("guidance_scale", "name")]
                candidates += [f"{name}.{k}" for name in stage_names for k in stage_keys]
                raise ConfigError(f"unknown config key {key!r}{nearest(key, candidates)}")
            raw = deep_merge(raw, _nested(key, value))
            continue
        for index in targets:
            stage = raw["stages"][index]
            allowed = stage_keys
            if stage_key.startswith("guidance"):  # only guidance keys need the guidance registry (torch)
                allowed = stage_keys + guidance_keys(stage.get("guidance", {"name": "sds"}), "guidance.")
            if stage_key not in allowed and not (stage_key.startswith("guidance.") and stage_key.count(".") > 1):
                raise ConfigError(f"unknown config key {key!r}{nearest(stage_key, allowed)}")
            raw["stages"][index] = deep_merge(stage, _nested(stage_key, value))
    return raw


def validate_guidance(stage: StageConfig, path: str) -> None:
    """Check a stage's guidance section against the chosen guidance's config class."""
    from dreamsmith.guidance import GUIDANCES

    name = stage.guidance.get("name", "sds")
    if name not in GUIDANCES:
        raise ConfigError(f"unknown guidance '{name}' in {path}guidance.name; choose one of {sorted(GUIDANCES)}")
    if "prompt" in stage.guidance:
        raise ConfigError(f"'{path}guidance.prompt' cannot be set: the prompt is the run's (the PROMPT argument)")
    guidance_class = GUIDANCES[name]
    views = guidance_class.views_per_group
    if stage.camera.batch_size % views:
        raise ConfigError(f"{path}camera.batch_size is {stage.camera.batch_size}, but guidance {name} judges groups "
                          f"of {views} views of one object: set it to a multiple of {views}")
    if guidance_class.fits_views and stage.shading.guide_normals:
        raise ConfigError(f"guidance {name} fits colour renders to edited views; set {path}shading.guide_normals=false")
    options = guidance_options(stage, guidance_class)
    guidance_class.check_config(build(guidance_class.config_class, options, f"{path}guidance."), f"{path}guidance.")


def guidance_options(stage: StageConfig, guidance_class: type) -> dict[str, Any]:
    """The stage's guidance options for ``guidance_class``'s config: the section less its name, a
    scheduled guidance's ``schedule_steps`` defaulting to the stage's steps, ``embedded:`` models resolved."""
    from dreamsmith.engine.presets import resolve_model

    options = {k: v for k, v in stage.guidance.items() if k != "name"}
    scheduled = "schedule_steps" in {f.name for f in dataclasses.fields(guidance_class.config_class)}
    if scheduled and not options.get("schedule_steps"):
        options["schedule_steps"] = max(1, stage.steps)
    if options.get("lora_model"):
        options["lora_model"] = resolve_model(options["lora_model"])
    return options


def resolve(raw: dict[str, Any]) -> RunConfig:
    """A validated ``RunConfig`` from a merged raw dict."""
    config = build(RunConfig, raw)
    if not config.stages:
        raise ConfigError("a run needs at least one stage")
    field_names = set(valid_keys(StageConfig))
    for index, stage in enumerate(config.stages):
        if stage.name in field_names or not stage.name:
            raise ConfigError(f"stage {index} is named '{stage.name}'; stage names must be non-empty and differ "
                              "from config fields (they prefix per-stage overrides)")
        safe_name(stage.name, f"stage {index}'s name")
        validate_guidance(stage, f"stages.{index}.")
        if stage.steps < 0:
            raise ConfigError(f"steps of stage '{stage.name}' must be >= 0, got {stage.steps}")
        validate_representation(stage, config.stages[index - 1] if index else None)
    safe_name(config.export.name, "export.name")
    check_export_options(config.export)
    threshold = config.export.isosurface_threshold
    if threshold != "auto" and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                or not math.isfinite(threshold) or threshold <= 0):
        raise ConfigError(f"export.isosurface_threshold must be a density > 0 or \"auto\", got {threshold!r}")
    return config


def check_export_options(export: ExportConfig) -> None:
    """The exporters' own checks of the export settings, as config errors before the run starts."""
    from dreamsmith.exporters.pipeline import check_options

    try:
        check_options(export)
    except ConfigError:
        raise
    except DreamsmithError as error:
        raise ConfigError(f"export: {error}") from None


PER_STAGE_FLAGS = ("dmtet.optimize_geometry", "dmtet.optimize_deformation", "nerf.optimize_geometry")
"""Copied sections' keys that say what a stage trains, not what it is: they may differ between stages."""


def validate_representation(stage: StageConfig, previous: StageConfig | None) -> None:
    """Check that ``stage``'s representation exists and can start from the ``previous`` stage's."""
    if previous is None:
        return
    if stage.representation == "nerf" and previous.representation != "nerf":
        raise ConfigError(f"stage '{stage.name}' (nerf) cannot start from stage '{previous.name}' "
                          f"({previous.representation}); put nerf stages first")
    if stage.representation == "texture":
        return  # it copies only the previous surface, whatever built it
    copied = ["nerf"] + (["dmtet"] if stage.representation == previous.representation == "dmtet" else [])
    for section in copied:
        differing = [key for key in differences(to_dict(getattr(previous, section)), to_dict(getattr(stage, section)),
                                                f"{section}.") if key not in PER_STAGE_FLAGS]
        if differing:
            raise ConfigError(f"stage '{stage.name}' starts from stage '{previous.name}''s {section}, but their "
                              f"'{differing[0]}' differ; set it for every stage (without the stage prefix)")


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys where two plain configs (nested dicts and lists) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{path}{k}.")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}{i}.")]
    return [] if a == b else [path.rstrip(".")]
