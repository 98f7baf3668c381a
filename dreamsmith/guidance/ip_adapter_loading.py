"""Loading IP-Adapter checkpoints in their published layouts (h94/IP-Adapter) for a loaded prior.

A checkpoint is ``{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight", "1.to_v_ip.weight", "3....", ...}}``:
pickled in the ``.bin`` files, flattened with ``image_proj.`` / ``ip_adapter.`` prefixes in the
``.safetensors`` ones. The plain (``ip-adapter_sd15``, ``ip-adapter_sdxl``) and "plus" projections are told
apart by their keys (:func:`~dreamsmith.guidance.image_projection.projection_from_state_dict`); the layer
numbers are checked against the UNet's cross-attention layers (:func:`cross_attention_layers`), and the
widths against the UNet and the image encoder, so an adapter for another base model is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError, ModelLoadError
from dreamsmith.guidance.image_encoders import ImageEncoder
from dreamsmith.guidance.image_projection import check_keys, projection_from_state_dict
from dreamsmith.guidance.ip_adapter import IPAdapter, IPAdapterLayer, cross_attention_layers
from dreamsmith.guidance.loading import PICKLE_SUFFIXES, read_checkpoint

PARTS = ("image_proj", "ip_adapter")


def adapter_file(path: str | Path) -> Path:
    """The checkpoint file of ``path``: the file itself, or the one ``.safetensors``/``.bin`` file in a folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelLoadError(f"IP-Adapter {path} does not exist; pass an ip-adapter .safetensors file or its folder")
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ModelLoadError(f"{path} must hold exactly one IP-Adapter checkpoint (.safetensors or .bin); "
                             f"found {found}")
    return candidates[0]


def read_adapter_state(path: Path, allow_pickle: bool = False) -> dict[str, dict[str, Tensor]]:
    """``{"image_proj": ..., "ip_adapter": ...}`` of a published checkpoint (pickles only if ``allow_pickle``)."""
    if path.suffix != ".safetensors" and path.suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(f"{path} is not an IP-Adapter checkpoint (.safetensors or .bin)")
    state = read_checkpoint(path, allow_pickle)
    if path.suffix == ".safetensors":  # flattened: image_proj.<key>, ip_adapter.<key>
        flat, state = state, {part: {} for part in PARTS}
        for key, value in flat.items():
            part, _, rest = key.partition(".")
            if part in state:
                state[part][rest] = value
    if not isinstance(state, dict) or not all(isinstance(state.get(part), dict) and state[part] for part in PARTS):
        raise ModelLoadError(f"{path} is not an IP-Adapter checkpoint: it needs image_proj and ip_adapter weights")
    return state


def build_ip_adapter(state: dict[str, dict[str, Tensor]], unet: torch.nn.Module, name: str = "the IP-Adapter",
                     projection: Callable[[dict[str, Tensor]], torch.nn.Module] = projection_from_state_dict
                     ) -> IPAdapter:
    """The :class:`IPAdapter` of ``state`` for ``unet``, its layers matched to the UNet's cross-attention layers
    by published number; a ``ConfigError`` when it was made for another base model. ``projection`` builds the
    ``image_proj`` module from its state dict (MS-Diffusion's grounding resampler is another)."""
    try:
        image_proj = projection(state["image_proj"])
    except (ValueError, RuntimeError, KeyError) as error:
        raise ModelLoadError(f"{name}: {error}") from None
    width = _token_width(image_proj)
    unet_width = int(unet.config.cross_attention_dim)
    if width != unet_width:
        raise ConfigError(f"{name} is for another base model: its image tokens are {width} wide, the model's "
                          f"cross-attention reads {unet_width}")
    numbers = sorted({key.split(".")[0] for key in state["ip_adapter"]}, key=int)
    layer_names = cross_attention_layers(unet)
    if numbers != sorted(layer_names, key=int):
        raise ConfigError(f"{name} is for another base model: it adapts {len(numbers)} cross-attention layers "
                          f"(numbers {_span(numbers)}), the model has {len(layer_names)} ({_span(list(layer_names))})")
    expected = {f"{number}.{kind}_ip.weight" for number in numbers for kind in ("to_k", "to_v")}
    try:
        check_keys(expected, set(state["ip_adapter"]), "ip_adapter")
    except ValueError as error:
        raise ModelLoadError(f"{name}: {error}") from None
    modules = dict(unet.named_modules())
    layers = {}
    for number in numbers:
        attn = modules[layer_names[number].removesuffix(".processor")]
        key = state["ip_adapter"][f"{number}.to_k_ip.weight"]
        hidden, token_width = int(attn.to_k.out_features), int(attn.to_k.in_features)
        if tuple(key.shape) != (hidden, token_width):
            raise ConfigError(f"{name} is for another base model: its layer {number} maps {key.shape[1]} to "
                              f"{key.shape[0]} channels, the model's {layer_names[number]} {token_width} to {hidden}")
        layer = IPAdapterLayer(token_width, hidden)
        layer.load_state_dict({k: state["ip_adapter"][f"{number}.{k}"] for k in ("to_k_ip.weight", "to_v_ip.weight")})
        layers[number] = layer
    reads_hidden = not hasattr(image_proj, "proj")
    return IPAdapter(image_proj, layers, layer_names, reads_hidden).requires_grad_(False).eval()


def check_encoder(adapter: IPAdapter, encoder: ImageEncoder, name: str = "the IP-Adapter") -> None:
    """The encoder gives what the adapter's projection reads (its width), or a ``ConfigError``."""
    projection = adapter.image_proj
    reads = projection.proj_in.in_features if adapter.reads_hidden_states else projection.proj.in_features
    gives = encoder.hidden_dim if adapter.reads_hidden_states else encoder.embed_dim
    if reads != gives:
        kind = "hidden states" if adapter.reads_hidden_states else "image embeddings"
        raise ConfigError(f"{name} reads {reads}-wide {kind}, its image encoder gives {gives}; pass the encoder it "
                          "was trained with (image_encoder=FOLDER)")


def default_encoder_folder(path: Path) -> Path:
    """Where the published layout keeps the encoder: ``image_encoder/`` beside the checkpoint file."""
    return path.parent / "image_encoder"


def adapter_encoder(adapter: Any, file: Path, image_encoder: str | Path | None, prior: Any, allow_pickle: bool,
                    name: str, where: str) -> ImageEncoder:
    """The image encoder of the adapter in ``file`` (``image_encoder``, else the published layout's folder beside
    it), loaded for ``prior`` and checked against what the adapter reads; a missing folder is one line naming
    ``where`` the published one lives."""
    from dreamsmith.guidance.image_encoders import load_image_encoder

    encoder_folder = Path(image_encoder) if image_encoder else default_encoder_folder(file)
    if not encoder_folder.is_dir():
        raise ModelLoadError(f"{name} needs its image encoder: {encoder_folder} does not exist; pass "
                             f"image_encoder=FOLDER ({where})")
    encoder = load_image_encoder(encoder_folder, prior.device, prior.dtype, allow_pickle)
    check_encoder(adapter, encoder, name)
    return encoder


def _token_width(image_proj: Any) -> int:
    norm = image_proj.norm if hasattr(image_proj, "norm") else image_proj.norm_out
    return int(norm.normalized_shape[0])


def _span(numbers: list[str]) -> str:
    return f"{numbers[0]}..{numbers[-1]}" if numbers else "none"


def image_prompt(path: str | Path, image: Any, prior: Any, scale: float = 1.0, image_encoder: str | Path | None = None,
                 allow_pickle: bool = False) -> Any:
    """The :class:`~dreamsmith.guidance.ip_adapter.IPAdapterConditioner` of the adapter at ``path`` for
    ``prior``, prompting with ``image`` (``[H, W, 3]`` in [0, 1]), its tokens and the zero image's computed once."""
    from dreamsmith.guidance.ip_adapter import IPAdapterConditioner

    file = adapter_file(path)
    name = f"the IP-Adapter {file}"
    adapter = build_ip_adapter(read_adapter_state(file, allow_pickle), prior.unet, name)
    adapter = adapter.to(device=prior.device, dtype=prior.dtype)
    encoder = adapter_encoder(adapter, file, image_encoder, prior, allow_pickle, name,
                              "h94/IP-Adapter: models/image_encoder")
    rgb = torch.as_tensor(image, dtype=torch.float32)[None]
    hidden = adapter.reads_hidden_states
    with torch.no_grad():
        tokens = adapter.image_proj(encoder.encode(rgb, hidden))
        zero = adapter.image_proj(encoder.zero_image(hidden))
    return IPAdapterConditioner(adapter, tokens, zero, scale)
