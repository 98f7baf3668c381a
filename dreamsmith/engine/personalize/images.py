"""Reading a user's subject images: one-line errors, one size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dreamsmith.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_paths(inputs: list[Path]) -> list[Path]:
    """The image files named by ``inputs`` (files, or folders whose images are taken in name order)."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise ConfigError(f"{item} does not exist; pass image files or a folder of images")
    if not paths:
        raise ConfigError(f"no images in {', '.join(str(i) for i in inputs) or 'the arguments'}; pass 3-5 "
                          f"images of the subject ({', '.join(IMAGE_SUFFIXES)}) or a folder of them")
    return paths


def read_images(paths: list[Path], message: Callable[[str], None] = lambda text: None) -> Tensor:
    """``[N, H, W, 3]`` float32 in [0, 1]: RGB (alpha composited over white, the renders' background).
    Images of another size than the first are resized to it, with a message; unreadable ones are refused."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                rgba = image.convert("RGBA")
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise ConfigError(f"cannot read the image {path}: {error}") from None
        if arrays and rgba.size != arrays[0].size:
            message(f"{path.name} is {rgba.size[0]}x{rgba.size[1]}, the others {arrays[0].size[0]}x"
                    f"{arrays[0].size[1]}: resized to match")
            rgba = rgba.resize(arrays[0].size, Image.Resampling.BILINEAR)
        arrays.append(rgba)
    stacked = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in arrays])
    rgb, alpha = stacked[..., :3], stacked[..., 3:]
    return torch.from_numpy(rgb * alpha + (1.0 - alpha))
