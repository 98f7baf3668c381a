"""InstantID's keypoint image from the asset's own 3D face landmarks, one per view.

IdentityNet (Wang et al. 2024, "InstantID: Zero-shot Identity-Preserving Generation in Seconds") is a
ControlNet that reads five facial keypoints drawn as InstantID's ``draw_kps`` draws them: on black, each of the
eyes and mouth corners joined to the nose by an ellipse ``stickwidth`` wide in the colour of its outer point, the
limbs dimmed to 60 %, then a disc of radius ``radius`` per point in its colour (red, green, blue, yellow,
magenta: left eye, right eye, nose, left mouth corner, right mouth corner, as seen in the image). The published
sizes (4 and 10 px) are for 1024-px images and are scaled to the model's size here; pixels are sampled at their
centres rather than by OpenCV's integer rasteriser (an edge pixel may differ).

In 3D the points are landmarks on the asset (world coordinates), projected into each view; the face is
*visible* in a view when its normal — (right eye − left eye) × (eye centre − mouth centre), pointing out of a
face whose left eye is at −x when it faces +z — points towards the camera.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamsmith.renderers.cameras import Cameras

KEYPOINT_COLOURS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
PUBLISHED_SIZE = 1024
STICK_WIDTH = 4.0
RADIUS = 10.0
DEFAULT_LANDMARKS = ((-0.12, 0.08, 0.42), (0.12, 0.08, 0.42), (0.0, -0.02, 0.5), (-0.09, -0.14, 0.43),
                     (0.09, -0.14, 0.43))
"""A face on the asset's front (+z, the azimuth-0 camera's side) for an asset about a unit wide: eyes, nose tip,
mouth corners."""


def face_normal(landmarks: Tensor) -> Tensor:
    """The unit normal ``[3]`` of the face the five landmarks ``[5, 3]`` describe (see the module doc)."""
    eyes = (landmarks[0] + landmarks[1]) / 2
    mouth = (landmarks[3] + landmarks[4]) / 2
    return torch.nn.functional.normalize(torch.linalg.cross(landmarks[1] - landmarks[0], eyes - mouth), dim=0)


def face_visible(landmarks: Tensor, cameras: Cameras) -> Tensor:
    """``[B]`` True where the face's normal points towards the camera and every landmark is in front of it."""
    landmarks = landmarks.to(cameras.position)
    towards = cameras.position - landmarks.mean(0)
    return ((towards @ face_normal(landmarks)) > 0) & project(landmarks, cameras)[1].all(dim=1)


def project(points: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Pixel coordinates ``[B, P, 2]`` (x right, y down, pixel centres at +0.5) of world ``points [P, 3]`` in each
    camera's image, and ``[B, P]`` True where a point is in front of the camera."""
    rotation, position = cameras.c2w[:, :3, :3].float(), cameras.position.float()
    local = torch.einsum("bji,bpj->bpi", rotation, points.float().to(position)[None] - position[:, None])
    depth = -local[..., 2]  # OpenGL: the camera looks along -z
    focal = cameras.focal_length.float().view(-1, 1)
    safe = depth.clamp(min=1e-6)
    x = cameras.width / 2 + focal * local[..., 0] / safe
    y = cameras.height / 2 - focal * local[..., 1] / safe
    return torch.stack([x, y], dim=-1), depth > 1e-6


def draw_keypoints(points: Tensor, height: int, width: int) -> Tensor:
    """``[B, 3, H, W]`` in [0, 1]: the keypoint image of ``points [B, 5, 2]`` (pixels), as ``draw_kps``."""
    scale = max(height, width) / PUBLISHED_SIZE
    stick, radius = max(STICK_WIDTH * scale, 0.75), max(RADIUS * scale, 1.0)
    rows = torch.arange(height, dtype=torch.float32, device=points.device) + 0.5
    cols = torch.arange(width, dtype=torch.float32, device=points.device) + 0.5
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)  # [H, W, 2] as (x, y)
    colours = torch.tensor(KEYPOINT_COLOURS, device=points.device)
    image = torch.zeros(points.shape[0], height, width, 3, device=points.device)
    for start, end in LIMBS:
        a, b = points[:, start, None, None], points[:, end, None, None]  # [B, 1, 1, 2]
        axis = b - a
        length = axis.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        direction = axis / length
        offset = grid - (a + b) / 2
        along = (offset * direction).sum(-1)
        across = offset[..., 0] * direction[..., 1] - offset[..., 1] * direction[..., 0]
        inside = (along / (length[..., 0] / 2).clamp(min=0.5)) ** 2 + (across / stick) ** 2 <= 1
        image = torch.where(inside[..., None], colours[start], image)
    image = image * 0.6
    for index in range(points.shape[1]):
        inside = (grid - points[:, index, None, None]).norm(dim=-1) <= radius
        image = torch.where(inside[..., None], colours[index], image)
    return image.permute(0, 3, 1, 2).contiguous()


def keypoint_images(landmarks: Tensor, cameras: Cameras, size: int) -> tuple[Tensor, Tensor]:
    """The keypoint image ``[B, 3, size, size]`` of each view and ``[B]`` whether the face is visible in it (black
    where it is not, or where a landmark is behind the camera)."""
    cameras = cameras.with_resolution(size, size)
    pixels, _ = project(landmarks, cameras)
    visible = face_visible(landmarks, cameras)
    images = draw_keypoints(pixels, size, size)
    return images * visible.view(-1, 1, 1, 1).to(images), visible
