"""Loading a diffusion prior: a diffusers folder or a Hugging Face id from the local cache, safetensors
only unless pickles are explicitly allowed, every failure a one-line :class:`ModelLoadError`."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.priors import METADATA_FILE, DiffusionPrior

COMPONENT_LIBRARIES = ("diffusers", "transformers")
# Only what a prior loads: the five components and the two index files.
HUB_PATTERNS = [
    "model_index.json",
    METADATA_FILE,
    "unet/*",
    "vae/*",
    "text_encoder/*",
    "tokenizer/*",
    "text_encoder_2/*",
    "tokenizer_2/*",
    "scheduler/*",
]
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def load_prior(
    model: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> DiffusionPrior:
    """Load a frozen :class:`DiffusionPrior` from a diffusers folder or a Hugging Face id.

    The folder holds ``model_index.json`` and the subfolders ``unet``, ``text_encoder``,
    ``tokenizer``, ``scheduler`` and, for latent models, ``vae`` (absent: pixel space); SDXL
    pipelines add ``text_encoder_2``/``tokenizer_2`` (the refiner has only those) and load as an
    :class:`~dreamsmith.guidance.sdxl.SDXLPrior`; plus an
    optional ``dreamsmith.json`` (``camera_conditioning``, ``known_prompts``, ``resolution``,
    ``fovy_deg``, ``elevation_range``, ``camera_distance``, and ``base``: a model folder, relative to
    this one, whose components stand in for those this folder lacks, so a fine-tuned UNet ships
    alone). A Hugging Face id is read from the
    local cache when offline (``HF_HUB_OFFLINE`` set or the Hub unreachable) and fails at once if it
    is not there. dtype: fp16 on CUDA, fp32 elsewhere unless given. Weights: safetensors only unless
    ``allow_pickle``. Raises :class:`ModelLoadError` with what to do.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    folder = resolve_model_folder(model, allow_pickle)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    index = _read_json(index_file)
    metadata_file = folder / METADATA_FILE
    metadata = _read_json(metadata_file) if metadata_file.is_file() else {}
    base = _base_model(folder, metadata)

    def source(name: str) -> tuple[Path, dict[str, Any]]:
        """The folder and index that hold component ``name``: this folder's, else its base's."""
        return (folder, index) if base is None or (folder / name).is_dir() else base

    sdxl = _present(*source("text_encoder_2"), "text_encoder_2")  # SDXL base and refiner
    text_slots = [("tokenizer", "text_encoder")]
    if sdxl:  # the refiner has the second encoder only
        text_slots = [slot for slot in (*text_slots, ("tokenizer_2", "text_encoder_2"))
                      if _present(*source(slot[1]), slot[1])]
    for required in ("unet", *(name for slot in text_slots for name in slot), "scheduler"):
        if not (source(required)[0] / required).is_dir():
            where = f"{folder} nor its base {base[0]}" if base is not None else str(folder)
            raise ModelLoadError(f"{where} has no {required}/ folder; a prior needs {required}")
    unet = _load_weights(*source("unet"), "unet", dtype, allow_pickle)
    if getattr(unet.config, "addition_embed_type", None) == "text_time" and not sdxl:
        raise ModelLoadError(f"{folder}: its UNet is SDXL-shaped (it reads pooled text and time ids) but the folder "
                             "has no text_encoder_2/; pass the whole SDXL pipeline folder")
    vae = _load_weights(*source("vae"), "vae", dtype, allow_pickle) if _present(*source("vae"), "vae") else None
    encoders = [(_load_config_only(*source(tokenizer), tokenizer, allow_pickle),
                 _load_weights(*source(encoder), encoder, dtype, allow_pickle)) for tokenizer, encoder in text_slots]
    scheduler = _load_config_only(*source("scheduler"), "scheduler", allow_pickle)
    for module in (unet, vae, *(encoder for _, encoder in encoders)):
        if module is not None:
            module.requires_grad_(False).eval().to(device)
    if sdxl:
        from dreamsmith.guidance.sdxl import SDXLPrior

        zeros = bool(index.get("force_zeros_for_empty_prompt", True))
        prior = SDXLPrior(unet, scheduler, encoders, vae, metadata=metadata, force_zeros_for_empty_prompt=zeros)
    else:
        (tokenizer, text_encoder), = encoders
        prior = DiffusionPrior(unet, scheduler, text_encoder, tokenizer, vae=vae, metadata=metadata)
    # what adapters trained on this model are checked against (guidance.adapters.model_fingerprint)
    prior.model_folder = folder
    prior.weight_folders = [source(name)[0] / name for name in ("unet", *(e for _, e in text_slots))]
    return prior


_RUN_MODELS: ContextVar[Callable[[str], DiffusionPrior] | None] = ContextVar("dreamsmith_run_models", default=None)


@contextmanager
def run_models(load: Callable[[str], DiffusionPrior]) -> Iterator[None]:
    """While a run builds its stages: models a guidance asks for by name (VSD's ``lora_model``) come from
    ``load``, the run's own loader, so a model a stage already uses is that same object (each guidance
    adds its own named adapters) and ``--allow-pickle`` applies. Scoped to the run: the next run in the
    same process (a job server) starts from clean models."""
    token = _RUN_MODELS.set(load)
    try:
        yield
    finally:
        _RUN_MODELS.reset(token)


def load_run_model(model: str, device: str | torch.device = "cpu", allow_pickle: bool = False) -> DiffusionPrior:
    """The running run's model ``model`` (see :func:`run_models`), else a fresh :func:`load_prior`."""
    load = _RUN_MODELS.get()
    return load(model) if load is not None else load_prior(model, device=device, allow_pickle=allow_pickle)


def _base_model(folder: Path, metadata: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The folder and ``model_index.json`` of the model named by ``dreamsmith.json``'s ``base`` (a path
    relative to ``folder``, or absolute), or None without one. One level only: a base's own base is not
    followed."""
    base = metadata.get("base")
    if base is None:
        return None
    if not isinstance(base, str) or not base:
        raise ModelLoadError(f"{folder / METADATA_FILE}: base must be the path of a model folder relative to "
                             f"{folder}, got {base!r}")
    base_folder = (folder / base).resolve()
    if not (base_folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder / METADATA_FILE}: its base {base!r} ({base_folder}) is not a diffusers "
                             "model folder; put the base model there or copy its components into this folder")
    return base_folder, _read_json(base_folder / "model_index.json")


def _present(folder: Path, index: dict[str, Any], name: str) -> bool:
    """Whether component ``name`` is part of the pipeline (a folder, not set to null in model_index.json)."""
    return (folder / name).is_dir() and (index.get(name) or [None])[0] is not None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from error


def _load_config_only(folder: Path, index: dict[str, Any], name: str, allow_pickle: bool) -> Any:
    """A component without weights (tokenizer, scheduler): its class must be of that kind, and a pickle
    in its folder is refused like any other (one pickle policy for every slot)."""
    cls = _component_class(folder, index, name)
    _check_kind(folder, name, cls)
    pickles = sorted(p.name for p in (folder / name).iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles and not allow_pickle:
        raise ModelLoadError(f"{folder / name} holds pickled files ({', '.join(pickles)}), which can run code when "
                             "loaded; remove them, or pass --allow-pickle if you trust their source")
    try:
        return cls.from_pretrained(folder / name)
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot load {folder / name}: {error}") from error


def _component_class(folder: Path, index: dict[str, Any], name: str) -> type:
    entry = index.get(name) or [None, None]
    library, class_name = entry[0], entry[1]
    if library not in COMPONENT_LIBRARIES:
        raise ModelLoadError(
            f"{folder}/model_index.json: component {name!r} comes from {library!r}; "
            f"dreamsmith loads components from {' and '.join(COMPONENT_LIBRARIES)} only"
        )
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise ModelLoadError(
            f"{folder}/model_index.json: {library} has no class {class_name!r} (component {name!r})"
        )
    return cls


def _check_kind(folder: Path, name: str, cls: type) -> None:
    """Refuse a class in the wrong slot of model_index.json (a model where a scheduler belongs, ...)."""
    import diffusers
    import transformers

    kinds = {"scheduler": (diffusers.SchedulerMixin,), "tokenizer": (transformers.PreTrainedTokenizerBase,)}
    expected = kinds.get(name.removesuffix("_2"), (torch.nn.Module,))
    if not issubclass(cls, expected):
        raise ModelLoadError(f"{folder}/model_index.json puts {cls.__name__} in the {name!r} slot, which needs a "
                             f"{' or '.join(k.__name__ for k in expected)}")


def _load_weights(
    folder: Path, index: dict[str, Any], name: str, dtype: torch.dtype, allow_pickle: bool
) -> Any:
    cls = _component_class(folder, index, name)
    _check_kind(folder, name, cls)
    use_safetensors, variant = _weights_format(folder / name, allow_pickle)
    if cls.__module__.startswith("diffusers"):
        # low-memory loading needs accelerate; without it diffusers warns on every load
        kwargs = {
            "torch_dtype": dtype,
            "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None,
        }
    else:
        kwargs = {_transformers_dtype_kwarg(): dtype}
    try:
        return cls.from_pretrained(folder / name, use_safetensors=use_safetensors, variant=variant, **kwargs)
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"cannot load {folder / name}: {error}") from error


def _transformers_dtype_kwarg() -> str:
    """transformers 5 renamed ``torch_dtype`` to ``dtype``."""
    import transformers

    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


def _weights_format(component: Path, allow_pickle: bool) -> tuple[bool, str | None]:
    """(use_safetensors, variant) for a component folder; refuses pickle-only folders unless allowed."""
    names = [path.name for path in component.iterdir()]
    safetensors = [name for name in names if name.endswith(".safetensors")]
    pickles = [name for name in names if name.endswith(PICKLE_SUFFIXES)]
    if not safetensors and not pickles:
        raise ModelLoadError(f"{component} holds no weights")
    if not safetensors:
        if not allow_pickle:
            raise ModelLoadError(
                f"{component} has only pickled weights ({', '.join(sorted(pickles))}), which can run code "
                "when loaded; convert them to .safetensors, or pass allow_pickle=True (--allow-pickle) "
                "if you trust their source"
            )
        return False, _variant(pickles)
    return True, _variant(safetensors)


def _variant(weight_files: list[str]) -> str | None:
    """None when plain weights exist (``model.safetensors``, shards); else the variant, e.g. ``fp16``
    from ``diffusion_pytorch_model.fp16.safetensors``."""
    variants = []
    for name in weight_files:
        parts = name.split(".")
        if len(parts) == 2:
            return None
        variants.append(parts[-2].split("-")[0])
    return "fp16" if "fp16" in variants else variants[0]


def resolve_model_folder(model: str | Path, allow_pickle: bool) -> Path:
    """The local folder of a model folder or Hugging Face id (from the cache when offline)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path} is a file; pass a diffusers model folder (with model_index.json)")
        return path
    if isinstance(model, str) and _HUB_ID.match(model) and not model.startswith("."):
        return _from_hub_cache_or_download(model, allow_pickle)
    raise ModelLoadError(
        f"model folder {path} does not exist; pass a diffusers model folder or a Hugging Face id (owner/name)"
    )


def _from_hub_cache_or_download(model_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    offline = _hub_offline()
    ignore = [] if allow_pickle else [f"*{suffix}" for suffix in PICKLE_SUFFIXES]
    try:
        return Path(
            snapshot_download(
                model_id, local_files_only=offline, allow_patterns=HUB_PATTERNS, ignore_patterns=ignore
            )
        )
    except Exception as error:  # huggingface_hub raises several unrelated types for "not available"
        if offline:
            raise ModelLoadError(
                f"model {model_id!r} is neither a local folder nor in the local Hugging Face cache, and the "
                "Hub cannot be reached (offline); download it on a machine with network "
                f"(`huggingface-cli download {model_id}` or `hf download`) and copy the cache here, "
                "or pass a local diffusers model folder"
            ) from error
        raise ModelLoadError(f"cannot download {model_id!r} from the Hugging Face Hub: {error}") from error


def _hub_offline(timeout_s: float = 1.0) -> bool:
    """True when HF_HUB_OFFLINE is set or the Hub's host does not answer within ``timeout_s``."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    reachable: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            reachable.append(True)
        except OSError:
            pass

    # DNS resolution has no timeout of its own: probe in a daemon thread and stop waiting.
    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return not reachable


def load_controlnet(
    folder: str | Path, device: torch.device | str, dtype: torch.dtype, allow_pickle: bool = False
) -> torch.nn.Module:
    """A frozen diffusers ``ControlNetModel`` from ``folder`` (safetensors only unless ``allow_pickle``)."""
    from diffusers import ControlNetModel

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a diffusers ControlNet folder (no config.json)")
    use_safetensors, variant = _weights_format(path, allow_pickle)
    try:
        controlnet = ControlNetModel.from_pretrained(
            path, use_safetensors=use_safetensors, variant=variant, torch_dtype=dtype,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"cannot load the ControlNet {path}: {error}") from None
    return controlnet.requires_grad_(False).eval().to(device)


def read_checkpoint(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """The checkpoint's tensors by key (a ``state_dict`` entry unwrapped; a pickle may nest them in dicts);
    pickles only if allowed, and then restricted to tensors (``weights_only``)."""
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(f"{path} is a pickled checkpoint, which can run code when loaded; pass "
                                 "--allow-pickle if you trust its source, or give a .safetensors conversion")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many unrelated types for an unreadable pickle
            raise ModelLoadError(f"cannot read {path}: {error}") from None
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (OSError, SafetensorError) as error:
            raise ModelLoadError(f"cannot read {path} as safetensors: {error}") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return dict(state)
