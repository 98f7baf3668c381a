"""Conditioners by the name configs use (``guidance.conditioners: [{name: ..., ...}]``), filled explicitly.

Each entry is (options dataclass, factory). The options are checked when the run's config resolves,
before any model loads; the factory builds the conditioner for a loaded prior when the stage starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from dreamsmith.configs import Range, build, nearest
from dreamsmith.errors import ConfigError, DreamsmithError
from dreamsmith.guidance.conditioners import Conditioner, ControlNetConditioner
from dreamsmith.regions import parse_region


@dataclass
class ControlNetOptions:
    """A ControlNet fed with the asset's own renders (Zhang et al. 2023)."""

    model: str = ""
    """A diffusers ControlNet folder (config.json + weights), for the stage's base model."""
    source: Literal["depth", "normal", "opacity"] = "depth"
    """Which render of the asset is the control image."""
    scale: float = 1.0
    """Conditioning scale (0: the base model exactly)."""


@dataclass
class LoRAOptions:
    """A LoRA adapter file in the diffusers/peft layout (``pytorch_lora_weights.safetensors``)."""

    path: str = ""
    """The .safetensors file, or a folder holding pytorch_lora_weights.safetensors."""
    scale: float = 1.0
    """Strength of the weight delta (0: the base model exactly)."""
    adapter_name: str = ""
    """Name of the adapter on the model (default: the file's stem); keep it apart from a guidance's own."""


@dataclass
class AdapterOptions:
    """A personalization adapter folder (``dreamsmith personalize``, or diffusers-layout TI/LoRA files)."""

    path: str = ""
    """The adapter folder (learned_embeds.safetensors and/or pytorch_lora_weights.safetensors)."""
    scale: float = 1.0
    """Strength of its LoRA (0: the base model exactly; its tokens stay defined)."""
    reward_scale: float = 0.0
    """DCO's reward guidance w: adds w(ε_adapter − ε_base) for the fully conditioned branch (0: plain CFG)."""


@dataclass
class RegionsOptions:
    """Regional prompts bound to 3D regions of the asset (RPG's regional cross-attention)."""

    regions: list[str] = field(default_factory=list)
    """'EXPRESSION: PROMPT' entries, e.g. 'y>0: a red roof' or 'box(-0.2,0,-0.2,0.2,0.5,0.2): a red door'."""
    base_ratio: Annotated[float, Range(0.0, 1.0)] = 0.3
    """How much of the base prompt's cross-attention is kept inside the regions (1: the base prompt only)."""

    def check(self, path: str) -> None:
        if not self.regions:
            raise ConfigError(f"'{path}.regions' needs at least one 'EXPRESSION: PROMPT' entry, e.g. 'y>0: a red roof'")
        for index, spec in enumerate(self.regions):
            try:
                parse_region(spec)
            except DreamsmithError as error:
                raise ConfigError(f"'{path}.regions.{index}': {error}") from None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _controlnet(options: ControlNetOptions, prior: Any, allow_pickle: bool) -> Conditioner:
    from dreamsmith.guidance.loading import load_controlnet

    controlnet = load_controlnet(options.model, prior.device, prior.dtype, allow_pickle)
    base, control = prior.unet.config, controlnet.config
    for key in ("cross_attention_dim", "block_out_channels", "in_channels"):
        if _plain(base.get(key)) != _plain(control.get(key)):
            raise ConfigError(f"the ControlNet {options.model} is for another base model: its {key} is "
                              f"{control.get(key)}, the stage's model has {base.get(key)}")
    return ControlNetConditioner(controlnet, options.source, options.scale)


def _lora(options: LoRAOptions, prior: Any, allow_pickle: bool) -> Conditioner:
    from dreamsmith.guidance.lora import LoRAConditioner, load_lora_file

    name = load_lora_file(prior.unet, Path(options.path), options.adapter_name or None)
    return LoRAConditioner(name, options.scale)


def _adapter(options: AdapterOptions, prior: Any, allow_pickle: bool) -> Conditioner:
    from dreamsmith.guidance.adapters import load_adapter

    return load_adapter(prior, Path(options.path), options.scale, options.reward_scale)


def _regions(options: RegionsOptions, prior: Any, allow_pickle: bool) -> Conditioner:
    from dreamsmith.guidance.prompt_check import check_prompt
    from dreamsmith.guidance.regional import RegionalPrompts

    regions = [parse_region(spec) for spec in options.regions]
    for region in regions:
        check_prompt(region.prompt, prior)
    embeds, _ = prior.text_condition(prior.encode_prompts([region.prompt for region in regions]))
    return RegionalPrompts(regions, embeds, options.base_ratio)


CONDITIONERS: dict[str, tuple[type, Callable[[Any, Any, bool], Conditioner]]] = {
    "controlnet": (ControlNetOptions, _controlnet),
    "lora": (LoRAOptions, _lora),
    "adapter": (AdapterOptions, _adapter),
    "regions": (RegionsOptions, _regions),
}


def conditioner_options(spec: Any, path: str) -> tuple[str, Any]:
    """``(name, typed options)`` of one ``{name: ..., ...}`` entry, or a ConfigError naming ``path``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"'{path}' must be a mapping with a name, e.g. {{name: controlnet, model: DIR}}")
    name = spec["name"]
    if name not in CONDITIONERS:
        raise ConfigError(f"unknown conditioner '{name}' in '{path}'{nearest(str(name), list(CONDITIONERS))}; "
                          f"choose one of {', '.join(CONDITIONERS)}")
    options_class, _ = CONDITIONERS[name]
    options = build(options_class, {k: v for k, v in spec.items() if k != "name"}, f"{path}.")
    required = [f for f in ("model", "path") if hasattr(options, f) and not getattr(options, f)]
    if required:
        raise ConfigError(f"'{path}.{required[0]}' is required for the {name} conditioner")
    if hasattr(options, "check"):
        options.check(path)
    return name, options


def build_conditioners(specs: list[dict[str, Any]], prior: Any, allow_pickle: bool = False) -> list[Conditioner]:
    """The conditioners of a guidance config's ``conditioners`` list, for ``prior``."""
    built = []
    for index, spec in enumerate(specs):
        name, options = conditioner_options(spec, f"guidance.conditioners.{index}")
        built.append(CONDITIONERS[name][1](options, prior, allow_pickle))
    return built


def conditioner_tokens(specs: list[dict[str, Any]]) -> list[str]:
    """The words the ``adapter`` conditioners of a ``conditioners`` list add to the model's vocabulary."""
    from dreamsmith.guidance.adapters import adapter_tokens

    return [token for spec in specs if isinstance(spec, dict) and spec.get("name") == "adapter"
            for token in adapter_tokens(spec.get("path", ""))]
