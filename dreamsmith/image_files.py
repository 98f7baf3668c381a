"""Reference images given by users (image prompts, style references): checked and read without torch.

An image must open with Pillow, be at least ``MIN_SIDE`` pixels on each side (a 1×1 image carries no
prompt) and hold at most ``MAX_PIXELS`` (the size is read from the header, before any decoding, so a
10000² file is refused at once rather than decoded into gigabytes); anything between is resized by the
encoder that reads it. Transparent pixels are composited on white, the renders' background.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from dreamsmith.errors import DreamsmithError

if TYPE_CHECKING:  # numpy loads with the first image read: a usage error answers without it
    import numpy as np

MIN_SIDE = 8
MAX_PIXELS = 4096 * 4096


def check_image(path: str | Path, what: str = "--image") -> Path:
    """``path`` as an existing, readable image of a usable size; a one-line ``DreamsmithError`` otherwise."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise DreamsmithError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        reason = "it is too large" if isinstance(error, Image.DecompressionBombError) else "not a readable image"
        raise DreamsmithError(f"{what} {path} is {reason}; pass a PNG or JPEG") from None
    if min(width, height) < MIN_SIDE:
        raise DreamsmithError(f"{what} {path} is {width}×{height}: too small to show anything; pass an image of at "
                              f"least {MIN_SIDE}×{MIN_SIDE} pixels")
    if width * height > MAX_PIXELS:
        raise DreamsmithError(f"{what} {path} is {width}×{height}, more than {MAX_PIXELS // 1_000_000} megapixels; "
                              "downscale it (the encoder reads a few hundred pixels a side anyway)")
    return path


def read_rgba(path: str | Path, what: str = "--image") -> tuple[np.ndarray, bool]:
    """``[H, W, 4]`` float32 RGBA in [0, 1] of a checked image (opaque where the file has no alpha), and whether
    the file has an alpha channel (or a transparent palette entry)."""
    import numpy as np
    from PIL import Image

    path = check_image(path, what)
    try:
        with Image.open(path) as image:
            image.load()
            has_alpha = "A" in image.getbands() or "transparency" in image.info
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise DreamsmithError(f"{what} {path} cannot be decoded ({error}); pass a PNG or JPEG") from None
    return rgba, has_alpha


def read_image(path: str | Path, what: str = "--image") -> np.ndarray:
    """``[H, W, 3]`` float32 sRGB in [0, 1] of a checked image, transparency composited on white."""
    rgba, _ = read_rgba(path, what)
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha)
