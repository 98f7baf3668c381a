"""Named LoRA weight deltas on a shared prior (peft), active only inside the model calls that ask.

LoRA (Hu et al. 2021): W x + (α/r) B A x on the attention projections, B zero-initialised. Several
techniques put a LoRA on the same UNet — VSD's particle score, a user's style or subject adapter,
DreamBooth-LoRA — so each is a *named* peft adapter, switched off for every call except those whose
conditioners name it (:class:`LoRAConditioner`), at that call's scale. Switched off, at scale 0, or at
init, the UNet's output is bit-identical to the base model's.

peft's public ``set_adapter``/``enable_adapters`` also flip ``requires_grad`` on adapter weights, which
would fight a guidance that trains one adapter while another is frozen; the call-scoped switch below
sets the active set directly and leaves training flags alone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.conditioners import Conditioner

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
"""The modules diffusers' and peft's UNet LoRAs adapt."""
LORA_FILE = "pytorch_lora_weights.safetensors"
UNET_PREFIX = "unet"
METADATA_KEY = "lora_adapter_metadata"
"""diffusers' safetensors metadata entry holding the LoRA config (``unet.r``, ``unet.lora_alpha``, ...)."""


def tuner_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [module for module in unet.modules() if isinstance(module, BaseTunerLayer)]


def lora_names(unet: torch.nn.Module) -> set[str]:
    """Names of the LoRA adapters installed on ``unet``."""
    return {name for layer in tuner_layers(unet) for name in getattr(layer, "lora_A", {})}


def add_lora(
    unet: torch.nn.Module,
    name: str,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = ATTENTION_PROJECTIONS,
) -> list[torch.nn.Parameter]:
    """Install a new LoRA adapter ``name`` (rank ``rank``, α = ``alpha`` or ``rank``) on ``unet``'s
    ``target_modules``, switched off for calls that do not name it; returns its parameters (fp32,
    trainable)."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ConfigError(f"LoRA '{name}': rank must be >= 1, got {rank}")
    if name in lora_names(unet):
        raise ConfigError(f"the model already has a LoRA adapter named '{name}'")
    before = {layer: (list(layer.active_adapters), layer.disable_adapters) for layer in tuner_layers(unet)}
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(target_modules), init_lora_weights=True)
    with warnings.catch_warnings():  # several named adapters on one model is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, unet, adapter_name=name)
    for layer in tuner_layers(unet):
        active, disabled = before.get(layer, ([], True))
        layer._active_adapter = active
        layer._disable_adapters = disabled or not active
    parameters = [p for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n]
    for parameter in parameters:
        parameter.data = parameter.data.float()
        parameter.requires_grad_(True)
    return parameters


def lora_state_dict(unet: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights, keyed by module path (``...to_q.lora_A.weight``)."""
    marker = f".{name}."
    return {
        key.replace(marker, "."): value.detach().clone()
        for key, value in unet.state_dict().items()
        if marker in key and "lora_" in key
    }


def load_lora_state_dict(unet: torch.nn.Module, name: str, state: dict[str, torch.Tensor]) -> None:
    """Load weights saved by :func:`lora_state_dict` into adapter ``name`` (same keys, or a one-line error)."""
    parameters = dict(unet.named_parameters())
    expected = {key.replace(f".{name}.", "."): key for key in parameters if f".{name}." in key and "lora_" in key}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"LoRA '{name}': weights do not match the model (missing {missing[:2]}, "
                          f"unexpected {unexpected[:2]})")
    wrong = [key for key, value in state.items() if value.shape != parameters[expected[key]].shape]
    if wrong:
        raise ConfigError(f"LoRA '{name}': {wrong[0]} has shape {list(state[wrong[0]].shape)}, the model's is "
                          f"{list(parameters[expected[wrong[0]]].shape)}; it was made for another base model")
    with torch.no_grad():
        for key, value in state.items():
            parameters[expected[key]].copy_(value)


@contextlib.contextmanager
def loras_active(unet: torch.nn.Module, scales: dict[str, float]) -> Iterator[None]:
    """Within the block, the adapters in ``scales`` are active too (beside any an enclosing block
    activated), each at its scale × α/r."""
    layers = tuner_layers(unet)
    saved = [(layer, layer.active_adapter, layer.disable_adapters, dict(layer.scaling)) for layer in layers]
    missing = set(scales) - lora_names(unet)
    if missing:
        raise ConfigError(f"the model has no LoRA adapter named {sorted(missing)[0]!r}")
    try:
        for layer in layers:
            present = [name for name in scales if name in layer.lora_A]
            already = [] if layer.disable_adapters else [n for n in layer.active_adapters if n not in present]
            layer._active_adapter = already + present
            layer._disable_adapters = not layer._active_adapter
            for name in present:
                layer.set_scale(name, scales[name])
        yield
    finally:
        for layer, active, disabled, scaling in saved:
            layer._active_adapter = active
            layer._disable_adapters = disabled
            layer.scaling.clear()
            layer.scaling.update(scaling)


class LoRAConditioner(Conditioner):
    """Activates the named LoRA adapter at ``scale`` for the calls it is passed to. ``reward_scale`` w > 0
    asks the guidance for DCO's reward guidance against the same call with this adapter at scale 0
    (:func:`~dreamsmith.guidance.math.reward_guidance`)."""

    def __init__(self, name: str, scale: float = 1.0, reward_scale: float = 0.0) -> None:
        self.name = name
        self.scale = scale
        self.reward_scale = reward_scale

    def without_reward(self) -> LoRAConditioner:
        """The same adapter at scale 0: the base model DCO's reward is measured against."""
        return LoRAConditioner(self.name, 0.0)

    def applied(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        return loras_active(unet, {self.name: self.scale})


def load_lora_file(unet: torch.nn.Module, path: Path, name: str | None = None) -> str:
    """Install the UNet LoRA of a diffusers/peft-layout file (``unet.<module>.lora_A.weight`` keys, as
    ``save_lora_weights`` writes; a folder means its ``pytorch_lora_weights.safetensors``) as a frozen
    adapter named ``name`` (default: the file's stem); returns the name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / LORA_FILE
    if path.suffix != ".safetensors" or not path.is_file():
        raise ConfigError(f"no LoRA weights at {path}: pass a .safetensors file or a folder holding "
                          "pytorch_lora_weights.safetensors")
    try:
        weights = load_file(path)
    except (OSError, SafetensorError) as error:
        raise ConfigError(f"cannot read the LoRA file {path}: {error}") from None
    state = {key.removeprefix(f"{UNET_PREFIX}."): value for key, value in weights.items()}
    foreign = [key for key in state if ".lora_A." not in key and ".lora_B." not in key]
    if foreign or not state:
        example = foreign[0] if foreign else "no keys"
        raise ConfigError(f"{path} is not a UNet LoRA in the diffusers/peft layout (e.g. {example!r}); "
                          "text-encoder and other layouts are not supported")
    return install_lora(unet, state, name or path.stem, str(path), lambda rank: _saved_alpha(path, rank))


def install_lora(unet: torch.nn.Module, state: dict[str, torch.Tensor], name: str, source: str,
                 alpha: Callable[[int], float] = float) -> str:
    """Install ``state`` (peft keys ``<module>.lora_A.weight``/``lora_B``, one rank) as the frozen adapter ``name``
    with α = ``alpha(rank)``; ``source`` names it in errors. Returns the name."""
    modules = sorted({key.split(".lora_")[0] for key in state})
    ranks = {state[f"{module}.lora_A.weight"].shape[0] for module in modules if f"{module}.lora_A.weight" in state}
    if len(ranks) != 1:
        raise ConfigError(f"{source}: expected one LoRA rank for every module, found {sorted(ranks)}")
    rank = ranks.pop()
    try:
        add_lora(unet, name, rank=rank, alpha=alpha(rank), target_modules=modules)
    except (ValueError, AttributeError) as error:
        raise ConfigError(f"{source} does not fit this model ({error})") from None
    load_lora_state_dict(unet, name, state)
    for parameter in (p for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n):
        parameter.requires_grad_(False)
    return name


def _saved_alpha(path: Path, rank: int) -> float:
    """α from diffusers' ``lora_adapter_metadata`` when the file has it, else the rank (diffusers' default)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    try:
        return float(json.loads(metadata.get(METADATA_KEY, "{}")).get(f"{UNET_PREFIX}.lora_alpha", rank))
    except (ValueError, TypeError, AttributeError):
        return float(rank)


def save_lora_file(unet: torch.nn.Module, name: str, path: Path, rank: int, alpha: float) -> None:
    """Write adapter ``name`` as diffusers' ``save_lora_weights`` does: peft keys under ``unet.``, the LoRA
    config in the ``lora_adapter_metadata`` entry (what ``pipe.load_lora_weights`` reads back)."""
    import json

    from safetensors.torch import save_file

    state = {f"{UNET_PREFIX}.{key}": value.float().contiguous() for key, value in lora_state_dict(unet, name).items()}
    modules = sorted({key.split(".lora_")[0].removeprefix(f"{UNET_PREFIX}.") for key in state})
    config = {f"{UNET_PREFIX}.r": rank, f"{UNET_PREFIX}.lora_alpha": alpha, f"{UNET_PREFIX}.target_modules": modules}
    save_file(state, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)})
