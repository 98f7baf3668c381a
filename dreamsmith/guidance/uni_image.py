"""The global condition's image embedding: a CLIP vision model's ``get_image_features`` of a reference image, as
Uni-ControlNet's content detector computes it (CLIP ViT-L/14: resized, centre-cropped, CLIP-normalised)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.image_files import read_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(rgb: Tensor, size: int) -> Tensor:
    """``rgb [B, H, W, 3]`` in [0, 1] -> CLIP's input ``[B, 3, size, size]``: shorter side resized to ``size``
    (bicubic), centre crop, normalised by CLIP's mean and standard deviation."""
    x = rgb.permute(0, 3, 1, 2)
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    x = F.interpolate(x, size=(max(size, round(height * scale)), max(size, round(width * scale))), mode="bicubic",
                      align_corners=False)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean.to(x)) / std.to(x)


@torch.no_grad()
def embed_reference_image(image: str | Path, encoder: str | Path, allow_pickle: bool = False) -> Tensor:
    """``[1, D]`` the image embedding of the file ``image`` by the CLIPVisionModelWithProjection in ``encoder``."""
    from transformers import CLIPVisionModelWithProjection

    rgb = read_image(image, "the reference image")  # transparency on white, as every image prompt
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(Path(encoder).expanduser(),
                                                              use_safetensors=not allow_pickle or None)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the image encoder {encoder}: {error}") from None
    pixels = clip_pixels(torch.from_numpy(rgb)[None], int(model.config.image_size))
    return model.eval()(pixel_values=pixels).image_embeds.float()
