"""Preview grids: a row of views (shaded colour over normals) as one PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from dreamsmith.engine.run_dir import atomic_write
from dreamsmith.renderers.outputs import RenderOutput, normal_image


def image_grid(rows: list[Tensor]) -> np.ndarray:
    """Stack rows of ``[B, H, W, 3]`` images in [0, 1] into one uint8 ``[rows*H, B*W, 3]`` image."""
    strips = [np.concatenate(list(row.clamp(0, 1).cpu().numpy()), axis=1) for row in rows]
    return (np.concatenate(strips, axis=0) * 255 + 0.5).astype(np.uint8)


def preview_grid(render: RenderOutput) -> np.ndarray:
    """Colour renders on top, normals (mapped to [0, 1], white background) below when present."""
    rows = [render.rgb]
    if render.normal is not None:
        rows.append(normal_image(render))
    return image_grid(rows)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 image atomically."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic_write(path, lambda temp: temp.write_bytes(buffer.getvalue()))
