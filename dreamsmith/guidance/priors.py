"""Diffusion priors: any diffusers text-to-image model behind one interface.

:func:`load_prior` reads a diffusers-format folder (or a Hugging Face id, resolved to a folder of
the local cache) and returns a frozen :class:`DiffusionPrior`: text in, ε out, with the
scheduler's ᾱ_t, the prediction type (ε or v) and latent vs pixel space. Weights load from
safetensors only unless the caller allows pickles explicitly.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.conditioners import (
    ConditionContext,
    Conditioner,
    all_applied,
    merge_unet_kwargs,
    tile_to_batch,
)
from dreamsmith.guidance.math import alpha_sigma, eps_from_v
from dreamsmith.renderers.cameras import Cameras

METADATA_FILE = "dreamsmith.json"
CAMERA_CONDITIONINGS = ("c2w16",)
COMPONENT_LIBRARIES = ("diffusers", "transformers")
# Only what a prior loads: the five components and the two index files.
HUB_PATTERNS = [
    "model_index.json",
    METADATA_FILE,
    "unet/*",
    "vae/*",
    "text_encoder/*",
    "tokenizer/*",
    "scheduler/*",
]
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_UNET_RESERVED = ("sample", "timestep", "encoder_hidden_states", "class_labels", "return_dict")


def c2w16_labels(c2w: Tensor, camera_distance: float) -> Tensor:
    """Camera class labels ``[B, 16]``: c2w ``[B, 4, 4]`` flattened row-major, with its translation
    column divided by ``camera_distance`` (so training-distance cameras have unit-norm positions)."""
    c2w = c2w.clone()
    c2w[:, :3, 3] = c2w[:, :3, 3] / camera_distance
    return c2w.reshape(-1, 16)


class DiffusionPrior:
    """A frozen diffusers model: text encoder + tokenizer, UNet, scheduler, and a VAE for latent models.

    Attributes: ``alphas_cumprod`` (fp32, on ``device``), ``num_train_timesteps``, ``prediction_type``
    ("epsilon" or "v_prediction"), ``is_latent``, ``image_size`` (pixels the model expects),
    ``latent_channels`` (channels of z), ``metadata`` (the folder's ``dreamsmith.json``, or {}),
    ``known_prompts`` (list or None), ``camera_conditioning`` ("c2w16" or None).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: Any,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        vae: torch.nn.Module | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.metadata = dict(metadata or {})
        self.device = unet.device
        self.dtype = unet.dtype
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ModelLoadError(
                f"scheduler {type(scheduler).__name__} has no alphas_cumprod; "
                "use a DDPM-type scheduler (DDPM, DDIM, PNDM, Euler)"
            )
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).to(self.device)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ModelLoadError(
                f"prediction_type {self.prediction_type!r} is not supported; "
                "dreamsmith distils ε- or v-prediction models"
            )
        self.is_latent = vae is not None
        unet_size = _as_int(unet.config.sample_size)
        if self.is_latent:
            vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.image_size = unet_size * vae_scale_factor  # diffusers pipelines' default size
            self.latent_channels = int(vae.config.latent_channels)
        else:
            self.image_size = unet_size
            self.latent_channels = int(unet.config.in_channels)
        self.known_prompts: list[str] | None = self.metadata.get("known_prompts")
        self.camera_conditioning: str | None = self.metadata.get("camera_conditioning")
        if self.camera_conditioning not in (None, *CAMERA_CONDITIONINGS):
            raise ModelLoadError(
                f"{METADATA_FILE}: unknown camera_conditioning {self.camera_conditioning!r}; "
                f"supported: {', '.join(CAMERA_CONDITIONINGS)}"
            )
        self.camera_distance = float(self.metadata.get("camera_distance", 1.0))

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Text embeddings ``[B, L, D]`` (the encoder's last hidden state), padded to the tokenizer's
        max length. CLIP encoders see no attention mask (as Stable Diffusion was trained); others
        (T5 in DeepFloyd IF) get one."""
        max_length = self.tokenizer.model_max_length
        if max_length > 4096:  # tokenizers without a configured limit report a huge sentinel
            max_length = getattr(self.text_encoder.config, "max_position_embeddings", 77)
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        config = self.text_encoder.config
        use_mask = getattr(config, "use_attention_mask", None)
        if use_mask is None:
            use_mask = not str(getattr(config, "model_type", "")).startswith("clip")
        attention_mask = tokens.attention_mask.to(self.device) if use_mask else None
        output = self.text_encoder(input_ids=tokens.input_ids.to(self.device), attention_mask=attention_mask)
        return output.last_hidden_state.to(self.dtype)

    def encode_images(
        self, rgb: Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        """z ``[B, latent_channels, h, w]`` of images ``rgb [B, H, W, 3]`` in [0, 1], differentiable.

        Images are resized (bilinear) to ``image_size``. Latent models: a draw (``sample=True``, from
        ``generator``) or the mean of the VAE posterior of 2x − 1, times the VAE's scaling factor.
        Pixel models: 2x − 1.
        """
        x = rgb.permute(0, 3, 1, 2)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        x = (2 * x - 1).to(device=self.device, dtype=self.dtype)
        if not self.is_latent:
            return x
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator) if sample else posterior.mean
        return (z - self._vae_shift) * self.vae.config.scaling_factor

    def decode_latents(self, z: Tensor) -> Tensor:
        """Images ``[B, H, W, 3]`` float32 in [0, 1] from z (the inverse of :meth:`encode_images`)."""
        z = z.to(device=self.device, dtype=self.dtype)
        x = (
            self.vae.decode(z / self.vae.config.scaling_factor + self._vae_shift).sample
            if self.is_latent
            else z
        )
        return ((x.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    @property
    def _vae_shift(self) -> float:
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    def camera_labels(self, cameras: Cameras | None, batch: int) -> Tensor | None:
        """The UNet's ``class_labels`` ``[batch, 16]`` for camera-conditioned models (zeros without
        cameras, i.e. camera dropped); None for models without camera conditioning."""
        if self.camera_conditioning is None:
            return None
        if cameras is None:
            return torch.zeros(batch, 16, device=self.device, dtype=self.dtype)
        labels = c2w16_labels(cameras.c2w.to(device=self.device, dtype=torch.float32), self.camera_distance)
        return tile_to_batch(labels, batch).to(self.dtype)

    def predict_noise(
        self,
        z_t: Tensor,
        t: Tensor | int,
        text_embeds: Tensor,
        cameras: Cameras | None = None,
        conditioners: Sequence[Conditioner] = (),
        context: ConditionContext | None = None,
        enable_grad: bool = False,
    ) -> Tensor:
        """ε̂(z_t; y, t) ``[B, C, h, w]`` in z_t's dtype, whatever the model predicts.

        z_t: ``[B, C, h, w]``; t: ``[B]`` or a scalar; text_embeds: ``[B, L, D]`` or ``[n, L, D]``
        with n dividing B (tiled); cameras: ``n`` cameras, n dividing B (tiled: e.g. both CFG halves),
        used by camera-conditioned models and ignored by others; conditioners: hooks applied in
        order (DESIGN.md "Diffusion priors"); context: what conditioners read. v-predictions are
        converted with the scheduler's α_t, σ_t; learned-variance outputs (DeepFloyd IF) are cut to
        ε. Runs under no_grad unless ``enable_grad``.
        """
        batch = z_t.shape[0]
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(batch)
        sample = z_t.to(device=self.device, dtype=self.dtype)
        embeds = tile_to_batch(text_embeds.to(device=self.device, dtype=self.dtype), batch)
        class_labels = self.camera_labels(cameras, batch)
        context = context or ConditionContext()
        context = dataclasses.replace(
            context,
            cameras=cameras if context.cameras is None else context.cameras,
            image_size=self.image_size,
            class_labels=class_labels,
        )
        with torch.set_grad_enabled(enable_grad), all_applied(conditioners, self.unet):
            for conditioner in conditioners:
                embeds = conditioner.transform_prompt_embeds(embeds, context)
            extra = [conditioner.extra_input_channels(sample, context) for conditioner in conditioners]
            extra = [channels.to(sample) for channels in extra if channels is not None]
            if extra:
                sample = torch.cat([sample, *extra], dim=1)
            kwargs = merge_unet_kwargs(
                [conditioner.unet_kwargs(sample, t, embeds, context) for conditioner in conditioners],
                reserved=_UNET_RESERVED,
            )
            output = self.unet(
                sample,
                t,
                encoder_hidden_states=embeds,
                class_labels=class_labels,
                return_dict=False,
                **kwargs,
            )[0]
        output = output[:, : z_t.shape[1]].float()  # learned-variance models also output a variance
        if self.prediction_type == "v_prediction":
            alpha, sigma = alpha_sigma(self.alphas_cumprod, t)
            output = eps_from_v(output, z_t.to(device=self.device, dtype=torch.float32), alpha, sigma)
        return output.to(z_t.dtype)


def _as_int(size: int | Sequence[int]) -> int:
    return int(size if isinstance(size, int) else size[0])


def load_prior(
    model: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
) -> DiffusionPrior:
    """Load a frozen :class:`DiffusionPrior` from a diffusers folder or a Hugging Face id.

    The folder holds ``model_index.json`` and the subfolders ``unet``, ``text_encoder``,
    ``tokenizer``, ``scheduler`` and, for latent models, ``vae`` (absent: pixel space), plus an
    optional ``dreamsmith.json`` (``camera_conditioning``, ``known_prompts``, ``resolution``,
    ``fovy_deg``, ``elevation_range``, ``camera_distance``). A Hugging Face id is read from the
    local cache when offline (``HF_HUB_OFFLINE`` set or the Hub unreachable) and fails at once if it
    is not there. dtype: fp16 on CUDA, fp32 elsewhere unless given. Weights: safetensors only unless
    ``allow_pickle``. Raises :class:`ModelLoadError` with what to do.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    folder = _resolve_folder(model, allow_pickle)
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"{folder} is not a diffusers model folder: it has no model_index.json")
    index = _read_json(index_file)
    metadata_file = folder / METADATA_FILE
    metadata = _read_json(metadata_file) if metadata_file.is_file() else {}
    for required in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (folder / required).is_dir():
            raise ModelLoadError(f"{folder} has no {required}/ folder; a prior needs {required}")
    has_vae = (folder / "vae").is_dir() and (index.get("vae") or [None])[0] is not None
    unet = _load_weights(folder, index, "unet", dtype, allow_pickle)
    vae = _load_weights(folder, index, "vae", dtype, allow_pickle) if has_vae else None
    text_encoder = _load_weights(folder, index, "text_encoder", dtype, allow_pickle)
    tokenizer = _load_config_only(folder, index, "tokenizer")
    scheduler = _load_config_only(folder, index, "scheduler")
    for module in (unet, vae, text_encoder):
        if module is not None:
            module.requires_grad_(False).eval().to(device)
    return DiffusionPrior(unet, scheduler, text_encoder, tokenizer, vae=vae, metadata=metadata)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from error


def _load_config_only(folder: Path, index: dict[str, Any], name: str) -> Any:
    """A component without weights (tokenizer, scheduler)."""
    cls = _component_class(folder, index, name)
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


def _load_weights(
    folder: Path, index: dict[str, Any], name: str, dtype: torch.dtype, allow_pickle: bool
) -> Any:
    cls = _component_class(folder, index, name)
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


def _resolve_folder(model: str | Path, allow_pickle: bool) -> Path:
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
