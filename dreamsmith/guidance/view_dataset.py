"""Instruct-NeRF2NeRF's dataset (Haque et al. 2023, Sec. 4): fixed views of the source asset, replaced one at a
time by edits of the asset's current render, which the asset is fitted to.

It lives in the run's checkpoint (cameras, the source's renders, the current images, which views are edited and
at which step, how many edits were made), so a resumed run continues with the dataset it had.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dreamsmith.renderers.cameras import Cameras

_CAMERA_TENSORS = ("c2w", "fovy", "azimuth", "elevation", "distance")


class ViewDataset:
    """K fixed views: cameras, ``originals [K, H, W, 3]`` (the source's renders: each view's image condition),
    ``images [K, H, W, 3]`` (what the asset is fitted to; the originals until edited), ``edited_at [K]`` (the
    step of each view's last edit, −1 for never) and ``edits``, the number of edits made (the next edit's view is
    ``edits mod K``: the views are edited in turn)."""

    def __init__(self, cameras: Cameras, originals: Tensor, images: Tensor | None = None,
                 edited_at: Tensor | None = None, edits: int = 0) -> None:
        if originals.shape[0] != len(cameras):
            raise ValueError(f"{len(cameras)} cameras but {originals.shape[0]} source images")
        self.cameras = cameras
        self.originals = originals.detach().float()
        self.images = self.originals.clone() if images is None else images.detach().float()
        self.edited_at = torch.full((len(cameras),), -1, dtype=torch.long) if edited_at is None else edited_at
        self.edits = int(edits)

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def next_view(self) -> int:
        """The view the next edit replaces."""
        return self.edits % len(self)

    def replace(self, view: int, image: Tensor, step: int) -> None:
        """The edit of ``view`` at ``step`` becomes its image ``[H, W, 3]``; the next edit takes the next view."""
        self.images[view] = image.detach().to(self.images)
        self.edited_at[view] = step
        self.edits += 1

    def skip(self) -> None:
        """An edit that failed (a non-finite image): the view keeps its image, the next edit takes the next view."""
        self.edits += 1

    def indices_of(self, cameras: Cameras) -> Tensor:
        """The dataset index of each of ``cameras`` ``[B]`` (they must be views of the dataset, exactly)."""
        c2w = self.cameras.c2w.to(cameras.device)
        same = (cameras.c2w[:, None] == c2w[None]).flatten(2).all(-1)
        if (cameras.height, cameras.width) != (self.cameras.height, self.cameras.width) or not same.any(1).all():
            raise ValueError("the cameras are not views of the Instruct-NeRF2NeRF dataset")
        return same.float().argmax(1).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {
            **{f"camera_{name}": getattr(self.cameras, name).cpu() for name in _CAMERA_TENSORS},
            "camera_size": torch.tensor([self.cameras.height, self.cameras.width]),
            "originals": self.originals.cpu(),
            "images": self.images.cpu(),
            "edited_at": self.edited_at.cpu(),
            "edits": self.edits,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> ViewDataset:
        height, width = (int(v) for v in state["camera_size"])
        cameras = Cameras(**{name: state[f"camera_{name}"] for name in _CAMERA_TENSORS}, height=height, width=width)
        return cls(cameras.to(device), state["originals"].to(device), state["images"].to(device),
                   state["edited_at"].clone(), state["edits"])
