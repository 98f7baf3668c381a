"""Image encoders for image prompts: what turns a reference image into the embedding an adapter projects.

Two kinds, loaded from a folder by :func:`load_image_encoder`:

- CLIP's vision tower (``CLIPVisionModelWithProjection``, the published IP-Adapters' OpenCLIP ViT-H/bigG):
  images resized (bicubic, shorter side) and centre-cropped to its input size, normalised with CLIP's
  mean and std (or the folder's ``preprocessor_config.json``); it gives the pooled, projected embedding
  ``[B, D]`` or the penultimate hidden states ``[B, L, D]`` (what IP-Adapter Plus reads).
- :class:`SmallImageEncoder`: a small convolutional encoder the project trains for its embedded prior
  (``config.json`` with ``"_class_name": "SmallImageEncoder"``), giving ``[B, D]``.

Both give :meth:`zero_image` the embedding the published IP-Adapter puts in the unconditional branch:
the plain adapter's is a zero embedding, the plus adapter's the hidden states of an all-zero (normalised)
pixel tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamsmith.errors import ModelLoadError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SMALL_ENCODER = "SmallImageEncoder"


class CLIPImageEncoder:
    """CLIP's vision tower with its preprocessing (see the module doc)."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD) -> None:
        self.model = model
        self.size = int(model.config.image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def hidden_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def pixels(self, rgb: Tensor) -> Tensor:
        """``rgb [B, H, W, 3]`` in [0, 1] -> normalised ``[B, 3, S, S]``."""
        x = rgb.permute(0, 3, 1, 2).float()
        height, width = x.shape[-2:]
        ratio = self.size / min(height, width)
        size = (max(self.size, int(height * ratio)), max(self.size, int(width * ratio)))  # truncated, as CLIP's
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - self.size) // 2, (size[1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_pixels(self, pixels: Tensor, hidden_states: bool) -> Tensor:
        pixels = pixels.to(device=self.model.device, dtype=self.model.dtype)
        if hidden_states:
            return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        return self.model(pixel_values=pixels).image_embeds

    def encode(self, rgb: Tensor, hidden_states: bool = False) -> Tensor:
        """The embedding ``[B, D]`` (or hidden states ``[B, L, D]``) of ``rgb [B, H, W, 3]`` in [0, 1]."""
        return self.encode_pixels(self.pixels(rgb), hidden_states)

    def zero_image(self, hidden_states: bool = False) -> Tensor:
        """The unconditional branch's embedding ``[1, ...]`` (see the module doc)."""
        if hidden_states:
            return self.encode_pixels(torch.zeros(1, 3, self.size, self.size), True)
        return torch.zeros(1, self.embed_dim, device=self.model.device, dtype=self.model.dtype)


class SmallImageEncoder(nn.Module):
    """Strided 3×3 convolutions (SiLU) over ``size``² images in [−1, 1], mean-pooled, then a linear layer to
    ``embed_dim``: the embedded prior's image encoder (trained with its adapter)."""

    def __init__(self, size: int = 32, channels: tuple[int, ...] = (32, 64, 128), embed_dim: int = 128) -> None:
        super().__init__()
        self.config = {"_class_name": SMALL_ENCODER, "size": size, "channels": list(channels), "embed_dim": embed_dim}
        layers: list[nn.Module] = []
        previous = 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.SiLU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(previous, embed_dim)
        self.size = size
        self.embed_dim = embed_dim
        self.hidden_dim = 0

    def forward(self, pixels: Tensor) -> Tensor:
        return self.proj(self.features(pixels).mean(dim=(2, 3)))

    def pixels(self, rgb: Tensor) -> Tensor:
        x = rgb.permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return 2 * x - 1

    def encode(self, rgb: Tensor, hidden_states: bool = False) -> Tensor:
        if hidden_states:
            raise ValueError("the small image encoder gives a pooled embedding only, not hidden states")
        weight = self.proj.weight
        return self(self.pixels(rgb).to(device=weight.device, dtype=weight.dtype))

    def zero_image(self, hidden_states: bool = False) -> Tensor:
        return torch.zeros(1, self.embed_dim, device=self.proj.weight.device, dtype=self.proj.weight.dtype)


ImageEncoder = CLIPImageEncoder | SmallImageEncoder


def load_image_encoder(folder: str | Path, device: Any = "cpu", dtype: torch.dtype = torch.float32,
                       allow_pickle: bool = False) -> ImageEncoder:
    """The image encoder in ``folder`` (``config.json`` + weights; safetensors unless ``allow_pickle``)."""
    from dreamsmith.guidance.loading import _weights_format

    path = Path(folder).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} is not an image encoder folder (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {config_file}: {error}") from None
    use_safetensors, _ = _weights_format(path, allow_pickle)
    if config.get("_class_name") == SMALL_ENCODER:
        from safetensors.torch import load_file

        encoder = SmallImageEncoder(config["size"], tuple(config["channels"]), config["embed_dim"])
        try:
            encoder.load_state_dict(load_file(path / "model.safetensors"))
        except (OSError, RuntimeError) as error:
            raise ModelLoadError(f"cannot load the image encoder {path}: {error}") from None
        return encoder.requires_grad_(False).eval().to(device=device, dtype=dtype)
    if "CLIPVisionModelWithProjection" not in config.get("architectures", []):
        raise ModelLoadError(f"{path} holds neither CLIPVisionModelWithProjection nor a {SMALL_ENCODER}; pass the "
                             "image encoder the adapter was trained with (h94/IP-Adapter: models/image_encoder)")
    from transformers import CLIPVisionModelWithProjection

    from dreamsmith.guidance.loading import _transformers_dtype_kwarg

    try:
        model = CLIPVisionModelWithProjection.from_pretrained(
            path, use_safetensors=use_safetensors, **{_transformers_dtype_kwarg(): dtype})
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelLoadError(f"cannot load the image encoder {path}: {error}") from None
    mean, std = CLIP_MEAN, CLIP_STD
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        settings = json.loads(preprocessor.read_text())
        mean, std = tuple(settings.get("image_mean", mean)), tuple(settings.get("image_std", std))
    return CLIPImageEncoder(model.requires_grad_(False).eval().to(device), mean, std)
