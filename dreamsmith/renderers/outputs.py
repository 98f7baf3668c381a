"""What every renderer returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from dreamsmith.renderers.cameras import Cameras


@dataclass
class RenderOutput:
    """Images of one batch of cameras, all ``[B, H, W, C]`` float32.

    rgb: ``[B, H, W, 3]`` in [0, 1], composited over the background;
    opacity: ``[B, H, W, 1]`` accumulated alpha; depth: ``[B, H, W, 1]`` expected distance along the
    ray (0 where empty); normal: ``[B, H, W, 3]`` world-space unit normals (zero where empty), or None;
    losses: per-render regularizer terms the renderer can compute cheaply (e.g. ``orientation``).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)


def normal_image(render: RenderOutput) -> Tensor:
    """The normals as an image ``[B, H, W, 3]``: (n + 1)/2 over a white background."""
    if render.normal is None:
        raise ValueError("this render has no normals")
    return (render.normal * 0.5 + 0.5) * render.opacity + (1 - render.opacity)


def surface_depth(render: RenderOutput) -> Tensor:
    """The surface's distance along each ray ``[B, H, W, 1]``: depth divided by opacity (renders composite
    depth like colour, so an anti-aliased or translucent edge would otherwise read as near)."""
    return render.depth / render.opacity.clamp(min=1e-6)


def surface_points(render: RenderOutput, cameras: Cameras) -> Tensor:
    """The world point each pixel sees ``[B, H, W, 3]`` (the expected ray termination; meaningless where
    the opacity is 0)."""
    height, width = render.depth.shape[1:3]
    origins, directions = cameras.with_resolution(height, width).generate_rays()
    return origins.to(render.depth) + directions.to(render.depth) * surface_depth(render)
