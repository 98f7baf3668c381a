"""Uni-ControlNet (Zhao et al. 2023, "Uni-ControlNet: All-in-One Control to Text-to-Image Diffusion Models") as
a conditioner: one local adapter for several stacked conditions, and a global adapter for an image embedding.

Local adapter: a trainable copy of the UNet's encoder (a diffusers ``ControlNetModel`` built from the base
UNet's config) that reads the stacked condition images not at its input but through feature-denoising
normalisation (FDN, Sec. 3.2) in the first ResBlock of each level: GroupNorm(x)·(1 + γ(c)) + β(c), γ and β
3×3 convolutions of multi-scale features a small convolutional extractor makes from the conditions (its
outputs zero-initialised convolutions). Its zero-convolution residuals add to the UNet's skip and middle
features, as ControlNet's do. Global adapter: two GEGLU feed-forward blocks map an image embedding (CLIP
ViT-L/14 ``get_image_features`` in the published model) to K extra context tokens appended to the text tokens,
scaled by the global strength; the unconditional branch gets a zero embedding, as the authors' sampler does.

The conditions are the asset's own renders (:func:`~dreamsmith.guidance.conditioners.control_image_from_render`),
each in its slot of the checkpoint's stacked channels (the published order: canny, mlsd, hed, sketch, openpose,
midas depth, seg; slots no render fills stay zero, as unused conditions are in the authors' code).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamsmith.guidance.conditioners import (
    ConditionContext,
    Conditioner,
    ControlSource,
    control_image_from_render,
    tile_to_batch,
)

PUBLISHED_SLOTS = ("canny", "mlsd", "hed", "sketch", "openpose", "depth", "seg")
"""The stacked conditions of the published ``uni.ckpt``, three channels each, in order (21 channels)."""
PRE_EXTRACTOR_CHANNELS = (32, 64, 64, 128, 128)
"""The feature extractor's stem: 3×3 convolutions with SiLU, the 2nd and 4th of stride 2 (the published widths)."""
CONDITION_DOWNSAMPLING = 8
"""The condition images are read at 8× the UNet's resolution (the stem's 4× and the first extractor's 2×)."""


class FeatureModulatedNorm(nn.Module):
    """FDN: GroupNorm(x) (no affine) · (1 + γ(c)) + β(c), with γ, β 3×3 convolutions of the level's condition
    features c, which :meth:`UniLocalAdapter.conditioned` sets for one call (``features``)."""

    def __init__(self, groups: int, channels: int, feature_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.param_free_norm = nn.GroupNorm(groups, channels, eps=eps, affine=False)
        self.conv_gamma = nn.Conv2d(feature_channels, channels, kernel_size=3, padding=1)
        self.conv_beta = nn.Conv2d(feature_channels, channels, kernel_size=3, padding=1)
        self.features: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.features is None:
            raise ValueError("FDN has no condition features: call the adapter inside UniLocalAdapter.conditioned")
        if self.features.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"condition features {tuple(self.features.shape[-2:])} do not match the features "
                             f"{tuple(x.shape[-2:])} they modulate")
        return fdn(self.param_free_norm(x), self.conv_gamma(self.features), self.conv_beta(self.features))


def fdn(normalized: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """Feature-denoising normalisation (Zhao et al. 2023, eq. 2): norm(x)·(1 + γ) + β."""
    return normalized * (1 + gamma) + beta


class FeatureExtractor(nn.Module):
    """Multi-scale features of the stacked conditions ``[B, local_channels, 8h, 8w]``: a stem to 4× down, then
    one stride-2 convolution + SiLU per injected level, each output through a zero-initialised 3×3 conv."""

    def __init__(self, local_channels: int, inject_channels: Sequence[int]) -> None:
        super().__init__()
        stem: list[nn.Module] = []
        previous = local_channels
        for index, width in enumerate(PRE_EXTRACTOR_CHANNELS):
            stem += [nn.Conv2d(previous, width, 3, padding=1, stride=2 if index in (1, 3) else 1), nn.SiLU()]
            previous = width
        self.pre_extractor = nn.Sequential(*stem)
        extractors, zero_convs = [], []
        for width in inject_channels:
            extractors.append(nn.Sequential(nn.Conv2d(previous, width, 3, padding=1, stride=2), nn.SiLU()))
            zero_convs.append(zero_init(nn.Conv2d(width, width, 3, padding=1)))
            previous = width
        self.extractors = nn.ModuleList(extractors)
        self.zero_convs = nn.ModuleList(zero_convs)

    def forward(self, conditions: Tensor) -> list[Tensor]:
        features = self.pre_extractor(conditions)
        outputs = []
        for extractor, zero_conv in zip(self.extractors, self.zero_convs, strict=True):
            features = extractor(features)
            outputs.append(zero_conv(features))
        return outputs


def zero_init(module: nn.Module) -> nn.Module:
    """``module`` with every parameter set to zero (ControlNet's zero convolutions)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class _NoImageInput(nn.Module):
    """Stands in for ControlNet's condition-image embedding, which Uni-ControlNet does not have (it reads its
    conditions through FDN): adds an exact zero."""

    def forward(self, conditioning: Tensor) -> Tensor:
        return conditioning.new_zeros(())


class UniLocalAdapter(nn.Module):
    """The local adapter (see the module doc). ``encoder``: a ``ControlNetModel`` of the base UNet's config whose
    first ResBlock of levels 0..n−1 has FDN norms; ``feature_extractor``: n extractor levels."""

    def __init__(self, encoder: nn.Module, local_channels: int, inject_channels: Sequence[int]) -> None:
        super().__init__()
        encoder.controlnet_cond_embedding = _NoImageInput()
        encoder.class_embedding = None  # the published adapter has no class (camera) input
        self.encoder = encoder
        self.feature_extractor = FeatureExtractor(local_channels, inject_channels)
        self.local_channels = local_channels
        self.norms: list[list[FeatureModulatedNorm]] = []
        for level, width in enumerate(inject_channels):
            resnet = encoder.down_blocks[level].resnets[0]
            groups, eps = resnet.norm1.num_groups, resnet.norm1.eps
            resnet.norm1 = FeatureModulatedNorm(groups, resnet.norm1.num_channels, width, eps)
            resnet.norm2 = FeatureModulatedNorm(groups, resnet.norm2.num_channels, width, eps)
            self.norms.append([resnet.norm1, resnet.norm2])

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @contextlib.contextmanager
    def conditioned(self, conditions: Tensor) -> Iterator[None]:
        """Set every FDN's features from ``conditions [B, local_channels, H, W]`` for the block."""
        features = self.feature_extractor(conditions)
        for level_features, norms in zip(features, self.norms, strict=True):
            for norm in norms:
                norm.features = level_features
        try:
            yield
        finally:
            for norms in self.norms:
                for norm in norms:
                    norm.features = None

    def forward(
        self, z_t: Tensor, t: Tensor, context: Tensor, conditions: Tensor, scale: float = 1.0
    ) -> tuple[list[Tensor], Tensor]:
        """(down residuals, mid residual), each × ``scale``, for ``z_t [B, C, h, w]`` and the stacked
        ``conditions [B, local_channels, 8h, 8w]``."""
        with self.conditioned(conditions):
            down, mid = self.encoder(
                z_t, t, encoder_hidden_states=context, controlnet_cond=z_t, conditioning_scale=scale,
                return_dict=False,
            )
        return list(down), mid


class GEGLU(nn.Module):
    """x·GELU(gate) of one projection Linear(d, 2i) split in halves (Shazeer 2020)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GEGLUFeedForward(nn.Module):
    """LDM's gated feed-forward: GEGLU(d, i) → dropout (none at inference) → Linear(i, d_out) (keys
    ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, inner: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim_out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class UniGlobalAdapter(nn.Module):
    """Image embedding ``[B, in_dim]`` -> ``tokens`` context tokens ``[B, tokens, in_dim]`` (LayerNorm →
    GEGLU feed-forward, twice; the published model: 768 -> 4 tokens)."""

    def __init__(self, in_dim: int, channel_mult: Sequence[int] = (2, 4)) -> None:
        super().__init__()
        first, second = channel_mult
        self.in_dim, self.tokens = in_dim, second
        self.norm1 = nn.LayerNorm(in_dim)
        self.ff1 = GEGLUFeedForward(in_dim, in_dim * first * 2, in_dim * first)
        self.norm2 = nn.LayerNorm(in_dim * first)
        self.ff2 = GEGLUFeedForward(in_dim * first, in_dim * first * (second * 2 // first), in_dim * second)

    def forward(self, embedding: Tensor) -> Tensor:
        x = self.ff2(self.norm2(self.ff1(self.norm1(embedding))))
        return x.view(x.shape[0], self.tokens, self.in_dim)


def stacked_conditions(
    images: dict[str, Tensor], slots: Sequence[str], like: Tensor
) -> Tensor:
    """``[B, 3·len(slots), H, W]``: each image ``[B, 3, H, W]`` in its slot's three channels, zeros elsewhere."""
    batch, _, height, width = like.shape
    stacked = like.new_zeros(batch, 3 * len(slots), height, width)
    for name, image in images.items():
        index = list(slots).index(name)
        stacked[:, 3 * index : 3 * index + 3] = image
    return stacked


class UniControlNetConditioner(Conditioner):
    """Uni-ControlNet fed with the asset's own renders (see the module doc).

    sources: which renders fill the local slots (``depth`` goes into the ``depth`` slot, MiDaS's in the published
    model); slots: the checkpoint's condition order; scale: the local residuals' strength (0: the base model
    exactly); global_adapter / image_embedding ``[1, in_dim]`` / global_strength: the global condition, or None.
    """

    def __init__(
        self, local: UniLocalAdapter | None, sources: Sequence[ControlSource], slots: Sequence[str],
        scale: float = 1.0, global_adapter: UniGlobalAdapter | None = None, image_embedding: Tensor | None = None,
        global_strength: float = 1.0,
    ) -> None:
        self.local, self.sources, self.slots = local, list(sources), list(slots)
        self.scale = scale
        self.global_adapter, self.image_embedding = global_adapter, image_embedding
        self.global_strength = global_strength

    def transform_prompt_embeds(self, embeds: Tensor, context: ConditionContext) -> Tensor:
        if self.global_adapter is None or self.image_embedding is None:
            return embeds
        embedding = tile_to_batch(self.image_embedding.to(embeds.device), embeds.shape[0]).float()
        if context.branch_labels:  # the unconditional branch sees a zero embedding (the authors' sampler)
            keep = ~context.branch_mask("uncond", embeds.device)
            embedding = embedding * keep.view(-1, 1).to(embedding)
        adapter_dtype = next(self.global_adapter.parameters()).dtype
        tokens = self.global_adapter(embedding.to(adapter_dtype)).to(embeds.dtype)
        return torch.cat([embeds, self.global_strength * tokens], dim=1)

    def unet_kwargs(self, z_t: Tensor, t: Tensor, embeds: Tensor, context: ConditionContext) -> dict[str, Any]:
        if self.local is None:
            return {}
        if context.render is None:
            raise ValueError("UniControlNetConditioner needs the render in its ConditionContext")
        size = (z_t.shape[-2] * CONDITION_DOWNSAMPLING, z_t.shape[-1] * CONDITION_DOWNSAMPLING)
        images = {}
        for source in self.sources:
            image = control_image_from_render(context.render, source, context.cameras)
            if image.shape[-2:] != size:
                image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            images[source] = tile_to_batch(image, z_t.shape[0]).to(device=z_t.device, dtype=self.local.dtype)
        like = z_t.new_zeros(z_t.shape[0], 3, *size).to(self.local.dtype)
        conditions = stacked_conditions(images, self.slots, like)
        down, mid = self.local(z_t.to(self.local.dtype), t, embeds.to(self.local.dtype), conditions, self.scale)
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
