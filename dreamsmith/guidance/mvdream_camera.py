"""MVDream's camera input (Shi et al. 2023, Sec. 3.1): c2w in its own frame, on the unit sphere, flattened.

MVDream builds its cameras in an OpenGL frame that is dreamsmith's (+Y up, azimuth 0 on +Z, azimuth
counter-clockwise seen from above, camera looking down its −Z) and then turns the world into
Blender's Z-up frame, (x, y, z) -> (x, −z, y), before feeding the matrix to the model. Its camera
embedding reads the 16 entries of that matrix with the camera centre moved onto the unit sphere;
an MLP (Linear → SiLU → Linear) adds it to the time embedding: in a converted checkpoint that MLP is
the UNet's ``projection`` class embedding, so these 16 numbers are its ``class_labels``.
"""

from __future__ import annotations

import torch
from torch import Tensor

OPENGL_TO_BLENDER = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
"""World change from the +Y-up frame to Blender's +Z-up one: x stays, y becomes −z, z becomes y."""


def to_mvdream_c2w(c2w: Tensor) -> Tensor:
    """dreamsmith's camera-to-world ``[B, 4, 4]`` in MVDream's (Blender, +Z up) world frame."""
    return OPENGL_TO_BLENDER.to(c2w) @ c2w


def mvdream_camera_labels(c2w: Tensor, eps: float = 1e-8) -> Tensor:
    """MVDream's camera vector ``[B, 16]`` for dreamsmith cameras ``c2w [B, 4, 4]``: the matrix in its
    frame (:func:`to_mvdream_c2w`) with the translation normalised to unit length (as MVDream's
    ``normalize_camera``, ``eps`` guarding a camera at the origin), flattened row-major."""
    camera = to_mvdream_c2w(c2w.float()).clone()
    translation = camera[:, :3, 3]
    camera[:, :3, 3] = translation / (translation.norm(dim=-1, keepdim=True) + eps)
    return camera.reshape(-1, 16)
