"""Personalization adapters: a folder a user trains once (``dreamsmith personalize``) and loads onto a prior.

The folder holds what users' tools already read: ``learned_embeds.safetensors`` (Textual Inversion, diffusers'
``{token: [D]}`` layout) and/or ``pytorch_lora_weights.safetensors`` (a UNet LoRA in the layout diffusers'
``save_lora_weights`` writes and ``load_lora_weights`` reads), plus our ``adapter.json`` (method, base model
and its fingerprint, token, class word, steps) and a model card ``README.md``. A folder with only the
third-party files loads too (nothing to check the base model against but the tensor shapes).

Each adapter's LoRA is a *named* peft adapter (``adapter_<folder>``), active only in calls given its
:class:`~dreamsmith.guidance.lora.LoRAConditioner`, so it never mixes with a guidance's own LoRA (VSD's
``particle``); its tokens join the prior's tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.conditioners import Conditioner
from dreamsmith.guidance.lora import LORA_FILE
from dreamsmith.guidance.textual_inversion import EMBEDS_FILE, vector_tokens

ADAPTER_FILE = "adapter.json"
METHODS = ("textual-inversion", "dreambooth", "lora", "dco")


@dataclass
class AdapterInfo:
    """What ``adapter.json`` records about how an adapter was made."""

    method: str = ""
    """textual-inversion, dreambooth, lora or dco ("" for a third-party folder)."""
    base_model: str = ""
    """The model it was trained on, as the user named it."""
    base_model_hash: str = ""
    """:func:`model_fingerprint` of that model ("" when unknown: not checked)."""
    token: str = ""
    """The new word, e.g. "<sks>"."""
    class_word: str = ""
    """The subject's class, e.g. "sphere"."""
    steps: int = 0
    """Optimization steps it was trained for."""
    lora_rank: int = 0
    """Rank of its LoRA (0: none)."""
    losses: list[float] = field(default_factory=list)
    """Training loss, one mean per logging interval."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The rest of the training settings (learning rate, prior-preservation weight, ...)."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def model_fingerprint(prior: Any) -> str:
    """A short sha256 of the UNet and text-encoder weight files the prior was loaded from ("" for a prior
    built in memory): what an adapter's ``base_model_hash`` is checked against."""
    folders = getattr(prior, "weight_folders", None)
    if not folders:
        return ""
    cached = getattr(prior, "_fingerprint", None)
    if cached is None:
        digest = hashlib.sha256()
        for folder in folders:
            for path in sorted(Path(folder).glob("*.safetensors")):
                digest.update(f"{Path(folder).name}/{path.name}".encode())
                digest.update(path.read_bytes())
        cached = digest.hexdigest()[:16]
        prior._fingerprint = cached
    return cached


def adapter_files(folder: Path | str) -> tuple[AdapterInfo, Path | None, Path | None]:
    """(info, embeddings file or None, LoRA file or None) of an adapter folder; one-line errors for a missing
    folder, one with neither file, or an unreadable ``adapter.json``."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"adapter folder {folder} does not exist; pass a folder written by "
                          "`dreamsmith personalize` or one holding learned_embeds.safetensors or "
                          "pytorch_lora_weights.safetensors")
    embeds, lora = folder / EMBEDS_FILE, folder / LORA_FILE
    embeds, lora = (embeds if embeds.is_file() else None), (lora if lora.is_file() else None)
    if embeds is None and lora is None:
        raise ConfigError(f"{folder} holds no adapter: expected {EMBEDS_FILE} and/or {LORA_FILE}")
    info = AdapterInfo()
    if (folder / ADAPTER_FILE).is_file():
        try:
            data = json.loads((folder / ADAPTER_FILE).read_text())
            known = {key: value for key, value in data.items() if key in AdapterInfo.__dataclass_fields__}
            info = AdapterInfo(**known)
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"cannot read {folder / ADAPTER_FILE}: {error}") from None
    return info, embeds, lora


def adapter_tokens(folder: Path | str) -> list[str]:
    """The words an adapter adds to the vocabulary (read from its files, no model needed): a token of n vectors
    as its n words (``<tok>``, ``<tok>_1``, ...)."""
    from safetensors import SafetensorError, safe_open

    info, embeds, _ = adapter_files(folder)
    if embeds is None:
        return [info.token] if info.token else []
    try:
        with safe_open(str(embeds), framework="pt") as handle:
            shapes = {token: handle.get_slice(token).get_shape() for token in handle.keys()}  # noqa: SIM118
        return [word for token, shape in shapes.items() for word in vector_tokens(token, _vectors(shape))]
    except (OSError, SafetensorError) as error:
        raise ConfigError(f"cannot read the embeddings {embeds}: {error}") from None


def _vectors(shape: list[int]) -> int:
    """How many vectors an embedding of ``shape`` holds (``[D]``: one, ``[n, D]``: n)."""
    return shape[0] if len(shape) == 2 else 1


def check_base_model(info: AdapterInfo, folder: Path, prior: Any) -> None:
    """Refuse an adapter whose recorded base model is not this prior (by fingerprint)."""
    fingerprint = model_fingerprint(prior)
    if info.base_model_hash and fingerprint and info.base_model_hash != fingerprint:
        here = getattr(prior, "model_folder", "this model")
        raise ConfigError(f"adapter {folder} was trained on {info.base_model or 'another model'} (fingerprint "
                          f"{info.base_model_hash}), not on {here} ({fingerprint}); use it with that model or "
                          "personalize again with --model")


def adapter_name(folder: Path) -> str:
    """The peft adapter name of a folder: ``adapter_<folder name>`` in letters, digits and underscores."""
    return "adapter_" + (re.sub(r"\W+", "_", folder.resolve().name).strip("_") or "unnamed")


def load_adapter(prior: Any, folder: Path | str, scale: float = 1.0, reward_scale: float = 0.0) -> Conditioner:
    """Put the adapter in ``folder`` on ``prior`` (its tokens into the tokenizer, its LoRA as a named frozen
    peft adapter) and return the conditioner that activates it at ``scale`` (a no-op one for an adapter
    without LoRA), with DCO's reward guidance at ``reward_scale``. Loading the same folder again on the same
    prior reuses what is there."""
    from dreamsmith.guidance.lora import LoRAConditioner, load_lora_file
    from dreamsmith.guidance.particle import free_adapter_name
    from dreamsmith.guidance.textual_inversion import load_embeddings

    folder = Path(folder).expanduser()
    info, embeds, lora = adapter_files(folder)
    check_base_model(info, folder, prior)
    loaded: dict[Path, str | None] = prior.__dict__.setdefault("_adapters", {})
    key = folder.resolve()
    if key not in loaded:
        if embeds is not None:
            load_embeddings(prior, embeds)
        name = None
        if lora is not None:
            name = free_adapter_name(prior.unet, adapter_name(folder))
            load_lora_file(prior.unet, lora, name)
        loaded[key] = name
    name = loaded[key]
    if name is None:
        if reward_scale:
            raise ConfigError(f"adapter {folder} has no LoRA: reward guidance measures a LoRA against its base")
        return Conditioner()
    return LoRAConditioner(name, scale, reward_scale)
