"""Reading a user's subject images: one-line errors, one size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError
from dreamsmith.image_files import read_image

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
    """``[N, H, W, 3]`` float32 in [0, 1]: RGB (alpha composited over white, the renders' background; see
    ``image_files.read_image``). Images of another size than the first are resized to it, with a message."""
    images = []
    for path in paths:
        image = torch.from_numpy(read_image(path, "the image"))
        if images and image.shape != images[0].shape:
            height, width = images[0].shape[:2]
            message(f"{path.name} is {image.shape[1]}x{image.shape[0]}, the others {width}x{height}: resized to match")
            image = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(height, width),
                                                    mode="bilinear", antialias=True, align_corners=False)[0]
            image = image.permute(1, 2, 0).clamp(0, 1)
        images.append(image)
    return torch.stack(images)
