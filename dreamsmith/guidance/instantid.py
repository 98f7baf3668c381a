"""InstantID (Wang et al. 2024): identity from a face embedding, in two parts on one UNet call.

- **ID tokens**: the 512-wide ArcFace embedding through a perceiver resampler (16 tokens) into IP-Adapter's
  decoupled cross-attention (:mod:`dreamsmith.guidance.ip_adapter`); the published ``ip-adapter.bin`` of
  InstantX/InstantID is IP-Adapter Plus's layout (``image_proj.*`` resampler, ``ip_adapter.{n}.to_k_ip/to_v_ip``),
  so :func:`~dreamsmith.guidance.ip_adapter_loading.build_ip_adapter` loads it. The unconditional branch gets the
  resampled zero embedding, as the published pipeline does.
- **IdentityNet**: a ControlNet on the keypoint image (:mod:`dreamsmith.guidance.face_keypoints`, drawn from the
  asset's 3D landmarks in each view) whose cross-attention context is the ID tokens, not the text (on SDXL it
  still reads the pooled text and time ids through ``added_cond_kwargs``, as the published pipeline passes them).

Both are gated per view: where the face is not visible (its landmarks face away from the camera) the sample gets
neither, so it sees the base model. Both scales 0: nothing is installed, the base model bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamsmith.errors import ConfigError
from dreamsmith.guidance.attention import AttentionHook
from dreamsmith.guidance.conditioners import ConditionContext, tile_to_batch
from dreamsmith.guidance.face_keypoints import face_visible, keypoint_images
from dreamsmith.guidance.ip_adapter import DecoupledCrossAttention, IPAdapter, IPAdapterConditioner

CONTROLNET_FOLDER = "ControlNetModel"
"""IdentityNet's folder beside ``ip-adapter.bin`` in InstantX/InstantID."""


class InstantIDConditioner(IPAdapterConditioner):
    """ID tokens (``scale``) plus IdentityNet (``controlnet_scale``) for the face at ``landmarks [5, 3]``."""

    def __init__(self, adapter: IPAdapter, tokens: Tensor, zero_tokens: Tensor, landmarks: Tensor,
                 identitynet: torch.nn.Module | None, scale: float = 0.8, controlnet_scale: float = 0.8) -> None:
        super().__init__(adapter, tokens, zero_tokens, scale)
        self.landmarks = landmarks
        self.identitynet = identitynet
        self.controlnet_scale = controlnet_scale if identitynet is not None else 0.0

    def gate(self, context: ConditionContext, batch: int, device: torch.device) -> Tensor:
        """``[batch]`` 1 for the samples whose view sees the face (all without cameras), else 0."""
        if context.cameras is None:
            return torch.ones(batch, device=device)
        visible = face_visible(self.landmarks, context.cameras)
        return tile_to_batch(visible.float(), batch).to(device)

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        if self.scale == 0:
            return ()
        batch = len(context.timesteps) if context.timesteps is not None else len(context.branch_labels) or 1
        scale = self.scale * self.gate(context, batch, self.image_tokens.device).view(-1, 1, 1)
        return [DecoupledCrossAttention(self.layers, self.tokens_for(context, batch), scale)]

    def unet_kwargs(self, z_t: Tensor, t: Tensor, embeds: Tensor, context: ConditionContext) -> dict[str, Any]:
        if self.controlnet_scale == 0:
            return {}
        if context.cameras is None:
            raise ValueError("IdentityNet needs the views' cameras in its ConditionContext")
        batch, net = z_t.shape[0], self.identitynet
        size = context.image_size or int(context.cameras.height)
        images, visible = keypoint_images(self.landmarks, context.cameras, size)
        images = tile_to_batch(images, batch).to(device=z_t.device, dtype=net.dtype)
        weight = self.controlnet_scale * tile_to_batch(visible.float(), batch).to(z_t.device)
        down, mid = net(z_t.to(net.dtype), t, encoder_hidden_states=self.tokens_for(context, batch).to(net.dtype),
                        controlnet_cond=images, conditioning_scale=1.0, class_labels=context.class_labels,
                        added_cond_kwargs=context.added_cond_kwargs, return_dict=False)
        return {"down_block_additional_residuals": tuple(d * weight.view(-1, 1, 1, 1).to(d) for d in down),
                "mid_block_additional_residual": mid * weight.view(-1, 1, 1, 1).to(mid)}


def instantid_files(path: str | Path, controlnet: str | Path | None = None) -> tuple[Path, Path]:
    """``(adapter file, IdentityNet folder)`` of InstantX/InstantID's layout: ``ip-adapter.bin`` (or a
    .safetensors conversion) and ``ControlNetModel/`` beside it; ``path`` the file or their folder."""
    from dreamsmith.guidance.ip_adapter_loading import adapter_file

    file = adapter_file(path)
    return file, Path(controlnet).expanduser() if controlnet else file.parent / CONTROLNET_FOLDER


def load_instantid(path: str | Path, embedding: Any, prior: Any, landmarks: Any, scale: float = 0.8,
                   controlnet_scale: float = 0.8, controlnet: str | Path | None = None,
                   allow_pickle: bool = False) -> InstantIDConditioner:
    """The :class:`InstantIDConditioner` of the adapter at ``path`` for ``prior``, the face ``embedding [512]``
    resampled once (and the zero embedding, for the unconditional branch)."""
    from dreamsmith.guidance.ip_adapter_loading import build_ip_adapter, read_adapter_state
    from dreamsmith.guidance.loading import load_controlnet

    file, net_folder = instantid_files(path, controlnet)
    name = f"the InstantID adapter {file}"
    adapter = build_ip_adapter(read_adapter_state(file, allow_pickle), prior.unet, name)
    if not adapter.reads_hidden_states:
        raise ConfigError(f"{name} is a plain IP-Adapter, not InstantID's (its image_proj is no resampler)")
    adapter = adapter.to(device=prior.device, dtype=prior.dtype)
    embedding = torch.as_tensor(embedding, dtype=torch.float32).reshape(1, 1, -1)
    reads = adapter.image_proj.proj_in.in_features
    if reads != embedding.shape[-1]:
        raise ConfigError(f"{name} reads {reads}-wide face embeddings, the face embedding has {embedding.shape[-1]}")
    with torch.no_grad():
        tokens = adapter.image_proj(embedding.to(prior.device))
        zero = adapter.image_proj(torch.zeros_like(embedding).to(prior.device))
    identitynet = None
    if controlnet_scale > 0:
        identitynet = load_controlnet(net_folder, prior.device, prior.dtype, allow_pickle)
        width, unet_width = identitynet.config.cross_attention_dim, prior.unet.config.cross_attention_dim
        if width != unet_width:
            raise ConfigError(f"the IdentityNet {net_folder} is for another base model: it attends to {width}-wide "
                              f"tokens, the model's are {unet_width}")
    points = torch.as_tensor(landmarks, dtype=torch.float32).reshape(5, 3)
    return InstantIDConditioner(adapter, tokens, zero, points, identitynet, scale, controlnet_scale)
