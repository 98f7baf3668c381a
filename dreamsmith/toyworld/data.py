"""The toyworld training set: renders of the 44 training captions from random cameras (TOYWORLD.md).

Rendered with the project's own SDF tracer, so renders of a generated asset and of the training
data are made the same way. The 4 held-out captions never appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from dreamsmith.engine.camera_sampling import CameraConfig, sample_cameras
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.sdf_tracer import render_sdf
from dreamsmith.toyworld import world as tw


@dataclass
class ToyworldDataset:
    """images: ``[N, H, W, 3]`` uint8; caption_index: ``[N]`` int64 into ``TRAIN_CAPTIONS``;
    c2w: ``[N, 4, 4]`` float32 camera-to-world of each render; depth_control: ``[N, H, W]`` uint8 each render's
    depth control image as the ControlNet conditioner makes it from a render (near bright, background 0),
    or None."""

    images: Tensor
    caption_index: Tensor
    c2w: Tensor
    depth_control: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def captions(self, index: Tensor) -> list[str]:
        """The caption strings of the renders at ``index [K]``."""
        return [tw.TRAIN_CAPTIONS[i] for i in self.caption_index[index].tolist()]

    def save(self, path: str | Path) -> None:
        """Write the dataset as one safetensors file."""
        save_file({"images": self.images, "caption_index": self.caption_index, "c2w": self.c2w}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> ToyworldDataset:
        """Read a dataset written by ``save``."""
        tensors = load_file(str(path))
        return cls(tensors["images"], tensors["caption_index"], tensors["c2w"])


def sample_toyworld_cameras(
    n: int, resolution: int, generator: torch.Generator,
    elevation_range: tuple[float, float] = tw.ELEVATION_RANGE_DEG,
) -> Cameras:
    """``n`` cameras with elevation uniform in ``elevation_range`` (default [-10, 50]) deg, azimuth
    U[0, 360) deg, distance 2.0, fovy 40 deg."""
    el_lo, el_hi = elevation_range
    az_lo, az_hi = tw.AZIMUTH_RANGE_DEG
    elevation = el_lo + (el_hi - el_lo) * torch.rand(n, generator=generator)
    azimuth = az_lo + (az_hi - az_lo) * torch.rand(n, generator=generator)
    return Cameras.from_spherical(azimuth, elevation, torch.tensor(tw.CAMERA_DISTANCE),
                                  torch.tensor(tw.FOVY_DEG), resolution)


def render_caption(text: str, cameras: Cameras, chunk: int = 2048, depth_control: bool = False) -> Tensor:
    """Ground-truth renders ``[B, H, W, 3]`` float32 of one caption from ``cameras``; ``depth_control``: with the
    depth control image of each as a fourth channel (:func:`control_image_from_render`, depth)."""
    from dreamsmith.guidance.conditioners import control_image_from_render

    sdf, albedo = tw.caption_sdf(text)
    images = []
    for start in range(0, len(cameras), chunk):
        part = cameras[start:start + chunk]
        out = render_sdf(sdf, part, albedo, tw.AMBIENT, tw.DIFFUSE, tw.BACKGROUND, bound_radius=tw.BOUNDING_RADIUS)
        if depth_control:
            control = control_image_from_render(out, "depth", part)[:, :1].permute(0, 2, 3, 1)
            images.append(torch.cat([out.rgb, control], dim=-1))
        else:
            images.append(out.rgb)
    return torch.cat(images)


def sample_toyworld_groups(
    n_groups: int, views: int, resolution: int, generator: torch.Generator,
    elevation_range: tuple[float, float] = tw.ELEVATION_RANGE_DEG,
) -> Cameras:
    """``n_groups * views`` cameras, group-major, grouped as the multi-view guidance groups its views
    (:func:`~dreamsmith.engine.camera_sampling.sample_cameras`): each group shares one elevation uniform
    in ``elevation_range``, its azimuths a start uniform in [0, 360) deg plus 360/views deg steps;
    distance 2.0, fovy 40 deg."""
    config = CameraConfig(
        batch_size=n_groups * views, resolution=resolution, elevation_range=elevation_range,
        azimuth_range=tw.AZIMUTH_RANGE_DEG, distance_range=(tw.CAMERA_DISTANCE,) * 2, fovy_range=(tw.FOVY_DEG,) * 2,
    )
    return sample_cameras(config, generator, views)


def generate_toyworld_dataset(
    n: int, resolution: int = 32, seed: int = 0,
    elevation_range: tuple[float, float] = tw.ELEVATION_RANGE_DEG, views_per_group: int = 1,
    depth_control: bool = False,
) -> ToyworldDataset:
    """``n`` renders, captions drawn uniformly from the 44 training captions, cameras at random
    (``depth_control``: with each render's depth control image).

    With ``views_per_group`` F > 1: ``n // F`` groups of F renders of one caption, group-major (rows
    ``k·F … k·F + F − 1``), cameras from :func:`sample_toyworld_groups`.
    """
    generator = torch.Generator().manual_seed(seed)
    if views_per_group > 1:
        n_groups = n // views_per_group
        group_caption = torch.randint(len(tw.TRAIN_CAPTIONS), (n_groups,), generator=generator)
        caption_index = group_caption.repeat_interleave(views_per_group)
        cameras = sample_toyworld_groups(n_groups, views_per_group, resolution, generator, elevation_range)
        n = n_groups * views_per_group
    else:
        caption_index = torch.randint(len(tw.TRAIN_CAPTIONS), (n,), generator=generator)
        cameras = sample_toyworld_cameras(n, resolution, generator, elevation_range)
    images = torch.empty(n, resolution, resolution, 4 if depth_control else 3, dtype=torch.uint8)
    for i, text in enumerate(tw.TRAIN_CAPTIONS):
        idx = (caption_index == i).nonzero().squeeze(-1)
        if idx.numel() == 0:
            continue
        rgb = render_caption(text, cameras[idx], depth_control=depth_control)
        images[idx] = (rgb * 255).round().clamp(0, 255).to(torch.uint8)
    control = images[..., 3].contiguous() if depth_control else None
    return ToyworldDataset(images[..., :3].contiguous(), caption_index, cameras.c2w.float(), control)
