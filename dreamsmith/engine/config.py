"""The run's configuration: dataclasses, filled from a preset (YAML) and ``key=value`` overrides.

A run is a list of stages; each stage has its representation, renderer, cameras, guidance, optimizer
and losses. Overrides address a field of the run (``seed=3``, ``export.isosurface_resolution=64``),
a field of every stage (``guidance.guidance_scale=50``, ``steps=2000``) or a field of one stage by
its name (``coarse.camera.resolution=32``). An unknown key is an error naming the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from dreamsmith.engine.part_configs import CameraConfig, LossConfig, OptimConfig, ShadingConfig
from dreamsmith.errors import ConfigError
from dreamsmith.renderers.configs import MeshRendererConfig, VolumeRendererConfig
from dreamsmith.representations.configs import BackgroundConfig, DMTetConfig, NeRFConfig
from dreamsmith.schedules import ScheduleSpec, check_schedule

REPRESENTATION_NAMES = ("nerf", "dmtet")


@dataclass
class StageConfig:
    name: str = "coarse"
    """Name of the stage (used in logs, checkpoints and per-stage overrides)."""
    steps: int = 10000
    """Optimization steps of this stage."""
    representation: str = "nerf"
    """What is optimized: nerf (a NeRF field) or dmtet (a DMTet surface textured by the nerf field's albedo)."""
    nerf: NeRFConfig = field(default_factory=NeRFConfig)
    """The NeRF field (representation nerf), or the texture field (dmtet: must match the NeRF stage before)."""
    dmtet: DMTetConfig = field(default_factory=DMTetConfig)
    """The DMTet grid (representation dmtet)."""
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
    preview_every: int = 500
    """Steps between preview grids (0: only at the end)."""
    checkpoint_every: int = 250
    """Steps between checkpoints (the last is kept; one is always written at the end)."""


@dataclass
class ExportConfig:
    isosurface_resolution: int = 128
    """Marching-cubes grid cells per side."""
    isosurface_threshold: float | str = 25.0
    """Density at the extracted surface, or "auto": the density whose silhouettes best match the NeRF's
    rendered opacity (faint fields export, haze does not)."""
    isosurface_smoothing: float = 0.0
    """Gaussian blur of the density grid before marching cubes (standard deviation in cells)."""
    keep_components_fraction: float = 0.05
    """Drop connected components with fewer faces than this fraction of the largest (floaters)."""
    formats: list[str] = field(default_factory=lambda: ["glb"])
    """Files written at the end of generate: any of glb, gltf, obj, usdz."""
    texture_size: int = 1024
    """Side of the baked base-colour texture (a power of two)."""
    max_triangles: int | None = None
    """Triangle budget (quadric decimation); null keeps every triangle."""
    lods: int = 0
    """Further levels of detail, each about half the triangles of the one before."""
    preview_resolution: int = 256
    """Turntable frame size beside the asset (GIF, MP4, poster); 0 writes none."""


@dataclass
class RunConfig:
    prompt: str = ""
    """The text prompt."""
    preset: str = "dreamfusion"
    """The preset the run started from."""
    model: str | None = None
    """Diffusion model: a local diffusers folder or a Hugging Face id (None: the preset's default)."""
    seed: int = 0
    """Seed of the run's random generator."""
    device: str = "auto"
    """auto, cpu or cuda."""
    allow_pickle: bool = False
    """Allow loading pickled (.bin/.ckpt) weights; only for models you trust."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    """The stages, run in order, each initialized from the one before."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """How the final asset is extracted."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass inside ``X`` or ``X | None``, if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def nearest(key: str, candidates: list[str]) -> str:
    """A ``; did you mean ...?`` hint for a misspelt key ('' when nothing is close)."""
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not match:
        last = key.rsplit(".", 1)[-1]
        match = [c for c in candidates if c.rsplit(".", 1)[-1] == last][:1]
    return f"; did you mean '{match[0]}'?" if match else ""


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass accepts (nested dataclasses expanded)."""
    keys = []
    for name, annotation in _field_types(cls).items():
        keys.append(prefix + name)
        inner = _dataclass_of(annotation)
        if inner is not None:
            keys += valid_keys(inner, f"{prefix}{name}.")
    return keys


def build(cls: type, values: dict[str, Any], path: str = "", extra_keys: typing.Callable | None = None) -> Any:
    """Instantiate dataclass ``cls`` from a plain dict, refusing unknown keys by name."""
    if not isinstance(values, dict):
        raise ConfigError(f"'{path.rstrip('.') or 'config'}' must be a mapping, got {values!r}")
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(f"unknown config key '{path}{key}'{nearest(path + key, valid_keys(cls, path))}")
        kwargs[key] = _convert(hints[key], value, f"{path}{key}")
    return cls(**kwargs)


def _convert(annotation: Any, value: Any, path: str) -> Any:
    if annotation == ScheduleSpec:
        check_schedule(value, path)
        return value
    inner = _dataclass_of(annotation)
    if inner is not None and isinstance(value, dict):
        return build(inner, value, path + ".")
    origin = typing.get_origin(annotation)
    if origin is list and value is not None:
        (item_type,) = typing.get_args(annotation)
        if dataclasses.is_dataclass(item_type):
            return [build(item_type, v, f"{path}.{i}.") for i, v in enumerate(value)]
        return list(value)
    if origin is tuple and value is not None:
        return tuple(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"'{path}' must be {annotation.__name__}, got {value!r}")
    return value


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
        raise ConfigError(f"override '{text}' is not KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override '{text}': cannot parse the value ({error.problem})") from None
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
                raise ConfigError(f"unknown config key '{key}'{nearest(key, candidates)}")
            raw = deep_merge(raw, _nested(key, value))
            continue
        for index in targets:
            stage = raw["stages"][index]
            allowed = stage_keys
            if stage_key.startswith("guidance"):  # only guidance keys need the guidance registry (torch)
                allowed = stage_keys + guidance_keys(stage.get("guidance", {"name": "sds"}), "guidance.")
            if stage_key not in allowed and not (stage_key.startswith("guidance.") and stage_key.count(".") > 1):
                raise ConfigError(f"unknown config key '{key}'{nearest(stage_key, allowed)}")
            raw["stages"][index] = deep_merge(stage, _nested(stage_key, value))
    return raw


def validate_guidance(stage: StageConfig, path: str) -> None:
    """Check a stage's guidance section against the chosen guidance's config class."""
    from dreamsmith.guidance import GUIDANCES

    name = stage.guidance.get("name", "sds")
    if name not in GUIDANCES:
        raise ConfigError(f"unknown guidance '{name}' in {path}guidance.name; choose one of {sorted(GUIDANCES)}")
    options = {k: v for k, v in stage.guidance.items() if k != "name"}
    build(GUIDANCES[name].config_class, options, f"{path}guidance.")


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
        validate_guidance(stage, f"stages.{index}.")
        if stage.steps < 0:
            raise ConfigError(f"steps of stage '{stage.name}' must be >= 0, got {stage.steps}")
        validate_representation(stage, config.stages[index - 1] if index else None)
    threshold = config.export.isosurface_threshold
    if threshold != "auto" and (isinstance(threshold, (bool, str)) or not threshold > 0):
        raise ConfigError(f"export.isosurface_threshold must be a density > 0 or \"auto\", got {threshold!r}")
    return config


def validate_representation(stage: StageConfig, previous: StageConfig | None) -> None:
    """Check that ``stage``'s representation exists and can start from the ``previous`` stage's."""
    if stage.representation not in REPRESENTATION_NAMES:
        raise ConfigError(f"unknown representation '{stage.representation}' in stage '{stage.name}'; "
                          f"choose one of {list(REPRESENTATION_NAMES)}")
    if previous is None:
        return
    if stage.representation == "nerf" and previous.representation != "nerf":
        raise ConfigError(f"stage '{stage.name}' (nerf) cannot start from stage '{previous.name}' "
                          f"({previous.representation}); put nerf stages first")
    copied = ["nerf"] + (["dmtet"] if stage.representation == previous.representation == "dmtet" else [])
    for section in copied:
        differing = differences(to_dict(getattr(previous, section)), to_dict(getattr(stage, section)), f"{section}.")
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
