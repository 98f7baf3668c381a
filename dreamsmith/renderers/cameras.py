"""The camera model: a batch of pinhole cameras and the rays they see.

Conventions (DESIGN.md, written here once):
- world: right-handed, +Y up, metres; the asset's front faces +Z;
- camera-to-world matrices in the OpenGL convention (the camera looks down its -Z, +Y up);
- azimuth 0 deg puts the camera on +Z looking at the front; azimuth grows counter-clockwise seen
  from above (azimuth 90 deg puts the camera on +X); elevation is the angle above the XZ plane;
- images are ``[B, H, W, C]``; row 0 is the top of the image, column 0 its left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def spherical_to_position(azimuth_deg: Tensor, elevation_deg: Tensor, distance: Tensor) -> Tensor:
    """Camera centres ``[B, 3]`` on a sphere around the origin."""
    azimuth = torch.deg2rad(azimuth_deg)
    elevation = torch.deg2rad(elevation_deg)
    return torch.stack(
        [
            distance * torch.cos(elevation) * torch.sin(azimuth),
            distance * torch.sin(elevation),
            distance * torch.cos(elevation) * torch.cos(azimuth),
        ],
        dim=-1,
    )


def look_at_c2w(position: Tensor, target: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices ``[B, 4, 4]`` for cameras at ``position [B, 3]`` looking at ``target``.

    The camera's +Y stays in the plane of world +Y; a camera exactly above or below the target gets
    world -Z (resp. +Z) as its up vector so the matrix stays well defined.
    """
    if target is None:
        target = torch.zeros_like(position)
    backward = torch.nn.functional.normalize(position - target, dim=-1)  # camera +Z
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=position.dtype, device=position.device).expand_as(backward)
    right = torch.linalg.cross(world_up, backward, dim=-1)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback_up = torch.tensor([0.0, 0.0, -1.0], dtype=position.dtype, device=position.device)
    fallback_up = fallback_up.expand_as(backward) * torch.sign(backward[..., 1:2]).clamp(min=-1, max=1)
    right = torch.where(degenerate, torch.linalg.cross(fallback_up, backward, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(backward, right, dim=-1)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = backward
    c2w[:, :3, 3] = position
    return c2w


@dataclass
class Cameras:
    """A batch of pinhole cameras looking at the origin.

    c2w: ``[B, 4, 4]`` camera-to-world (OpenGL); fovy: ``[B]`` vertical field of view in degrees;
    azimuth, elevation: ``[B]`` degrees; distance: ``[B]`` metres; height, width: image size in pixels.
    """

    c2w: Tensor
    fovy: Tensor
    azimuth: Tensor
    elevation: Tensor
    distance: Tensor
    height: int
    width: int

    @classmethod
    def from_spherical(
        cls,
        azimuth_deg: Tensor,
        elevation_deg: Tensor,
        distance: Tensor,
        fovy_deg: Tensor,
        height: int,
        width: int | None = None,
    ) -> Cameras:
        """Cameras on a sphere around the origin, looking at it with +Y up."""
        azimuth_deg, elevation_deg, distance, fovy_deg = torch.broadcast_tensors(
            *(torch.as_tensor(v, dtype=torch.float32) for v in (azimuth_deg, elevation_deg, distance, fovy_deg))
        )
        azimuth_deg, elevation_deg, distance, fovy_deg = (
            v.reshape(-1) for v in (azimuth_deg, elevation_deg, distance, fovy_deg)
        )
        position = spherical_to_position(azimuth_deg, elevation_deg, distance)
        return cls(
            c2w=look_at_c2w(position),
            fovy=fovy_deg,
            azimuth=azimuth_deg,
            elevation=elevation_deg,
            distance=distance,
            height=height,
            width=width or height,
        )

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """Camera centres ``[B, 3]``."""
        return self.c2w[:, :3, 3]

    @property
    def focal_length(self) -> Tensor:
        """Focal length in pixels ``[B]`` (square pixels)."""
        return 0.5 * self.height / torch.tan(torch.deg2rad(self.fovy) / 2)

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            c2w=self.c2w.to(device),
            fovy=self.fovy.to(device),
            azimuth=self.azimuth.to(device),
            elevation=self.elevation.to(device),
            distance=self.distance.to(device),
            height=self.height,
            width=self.width,
        )

    def __getitem__(self, index: slice | Tensor) -> Cameras:
        return Cameras(
            c2w=self.c2w[index],
            fovy=self.fovy[index],
            azimuth=self.azimuth[index],
            elevation=self.elevation[index],
            distance=self.distance[index],
            height=self.height,
            width=self.width,
        )

    def with_resolution(self, height: int, width: int | None = None) -> Cameras:
        """The same cameras rendering a different image size (same field of view)."""
        return Cameras(self.c2w, self.fovy, self.azimuth, self.elevation, self.distance, height, width or height)

    def directions_camera(self) -> Tensor:
        """Unnormalized ray directions in camera space ``[B, H, W, 3]`` through pixel centres."""
        device = self.device
        rows = torch.arange(self.height, device=device, dtype=torch.float32) + 0.5
        cols = torch.arange(self.width, device=device, dtype=torch.float32) + 0.5
        row, col = torch.meshgrid(rows, cols, indexing="ij")
        focal = self.focal_length.to(torch.float32).view(-1, 1, 1)
        x = (col - self.width / 2) / focal
        y = -(row - self.height / 2) / focal  # row 0 is the top of the image
        z = -torch.ones_like(x)
        return torch.stack([x, y, z], dim=-1)

    def generate_rays(self) -> tuple[Tensor, Tensor]:
        """World-space ray origins and unit directions, each ``[B, H, W, 3]``."""
        directions = torch.einsum("bhwj,bij->bhwi", self.directions_camera(), self.c2w[:, :3, :3].float())
        directions = torch.nn.functional.normalize(directions, dim=-1)
        origins = self.position.float().view(-1, 1, 1, 3).expand_as(directions)
        return origins, directions

    def plucker_map(self, distance_scale: float = 1.0) -> Tensor:
        """Per-pixel Plücker ray coordinates ``[B, 6, H, W]``: the unit direction d and the moment
        o × d, with the origin o divided by ``distance_scale`` (a camera-conditioned prior's
        training distance, so its cameras have unit-norm positions). The image-aligned camera
        signal a UNet reads as extra input channels."""
        origins, directions = self.generate_rays()
        moment = torch.cross(origins / distance_scale, directions, dim=-1)
        return torch.cat([directions, moment], dim=-1).permute(0, 3, 1, 2).contiguous()

    def projection(self, near: float = 0.01, far: float = 100.0) -> Tensor:
        """OpenGL clip-space projection matrices ``[B, 4, 4]`` (for rasterizers)."""
        aspect = self.width / self.height
        tan_half = torch.tan(torch.deg2rad(self.fovy) / 2)
        proj = torch.zeros(len(self), 4, 4, dtype=torch.float32, device=self.device)
        proj[:, 0, 0] = 1 / (tan_half * aspect)
        proj[:, 1, 1] = 1 / tan_half
        proj[:, 2, 2] = -(far + near) / (far - near)
        proj[:, 2, 3] = -2 * far * near / (far - near)
        proj[:, 3, 2] = -1
        return proj


def orbit_cameras(
    n_views: int,
    elevation_deg: float,
    distance: float,
    fovy_deg: float,
    resolution: int,
    start_azimuth_deg: float = 0.0,
) -> Cameras:
    """``n_views`` cameras evenly spaced in azimuth at one elevation (previews, scoring)."""
    azimuth = start_azimuth_deg + torch.arange(n_views, dtype=torch.float32) * (360.0 / n_views)
    return Cameras.from_spherical(azimuth, torch.tensor(elevation_deg), torch.tensor(distance),
                                  torch.tensor(fovy_deg), resolution)

