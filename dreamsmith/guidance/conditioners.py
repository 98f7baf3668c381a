"""Composable hooks on the prior's one UNet call (DESIGN.md, "Diffusion priors").

A conditioner adds one 2D technique to the model call without the guidance method knowing about
it. Every hook is a no-op by default, so a conditioner overrides only the ones it needs:

- ``transform_prompt_embeds``: textual inversion, identity embeddings, aligned multimodal prompts;
- ``extra_input_channels``: image latents concatenated to z_t (InstructPix2Pix, try-on models);
- ``unet_kwargs``: ControlNet residuals, ``added_cond_kwargs`` (IP-Adapter), ``cross_attention_kwargs``;
- ``attention_hooks()``: stages of every attention computation (multi-view attention, Prompt-to-Prompt,
  shared-attention style, regional prompts), chained with other conditioners' hooks on each module
  (:mod:`dreamsmith.guidance.attention`);
- ``time_embedding_delta``: a vector added to the UNet's time embedding (camera embeddings);
- ``noise_correction``: a term added to ε̂ after the call, e.g. self-guidance's σ_t ∇_{z_t} g of an energy on
  the call's attention maps (``wants_input_grad``: the call then runs with autograd on z_t);
- ``applied(unet)``: anything else installed for the duration of the call and removed after (weight
  deltas: named LoRA adapters, :mod:`dreamsmith.guidance.lora`).

``DiffusionPrior.predict_noise`` merges them (see :func:`merge_unet_kwargs`). Switched off or at
scale 0, a conditioner must leave the model's output exactly unchanged: that is its first test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from dreamsmith.guidance.attention import AttentionHook, hooks_active
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput, surface_depth

# UNet kwargs whose values add up across conditioners (residual features).
ADDITIVE_KWARGS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)
# UNet kwargs that are dicts: conditioners contribute disjoint keys.
DICT_KWARGS = ("added_cond_kwargs", "cross_attention_kwargs")


@dataclass
class ConditionContext:
    """What a conditioner may read about the current step.

    render: the asset's render of this step, detached (``[B, H, W, C]`` images); cameras: the ``B``
    cameras it was rendered from; step: the optimization step. branch_labels: the classifier-free
    guidance branch of each sample of the call (``"cond"``, ``"uncond"``, ``"image"``, ...; empty when
    the caller has no branches), e.g. an image prompt puts zeros in the unconditional branch;
    source_image: ``[B_call, H, W, 3]`` images a branch is conditioned on (InstructPix2Pix's source
    render), with source_mask ``[B_call]`` True where a sample has one. The prior fills in the rest for
    each call: image_size: the pixel size the model expects; class_labels: the UNet's class labels for
    this call (camera conditioning), or None; timesteps: ``[B_call]`` the call's integer t; added_cond_kwargs:
    what an SDXL UNet reads beside the text tokens (pooled text, time ids), for ControlNets of the same family.
    """

    render: RenderOutput | None = None
    cameras: Cameras | None = None
    step: int = 0
    image_size: int | None = None
    class_labels: Tensor | None = None
    branch_labels: tuple[str, ...] = ()
    source_image: Tensor | None = None
    source_mask: Tensor | None = None
    timesteps: Tensor | None = None
    added_cond_kwargs: dict[str, Tensor] | None = None

    def branch_mask(self, label: str, device: torch.device | None = None) -> Tensor:
        """``[B_call]`` True for the samples of branch ``label``."""
        return torch.tensor([b == label for b in self.branch_labels], dtype=torch.bool, device=device)


class Conditioner:
    """Base of all conditioners: every hook is a no-op. ``scale`` is the technique's strength."""

    scale: float = 1.0

    def transform_prompt_embeds(self, embeds: Tensor, context: ConditionContext) -> Tensor:
        """The text embeddings ``[B, L, D]`` the UNet sees."""
        return embeds

    def extra_input_channels(self, z_t: Tensor, context: ConditionContext) -> Tensor | None:
        """Channels ``[B, C', h, w]`` concatenated to z_t along dim 1, or None."""
        return None

    def unet_kwargs(
        self, z_t: Tensor, t: Tensor, embeds: Tensor, context: ConditionContext
    ) -> dict[str, Any]:
        """Keyword arguments for the UNet call, given its input ``z_t`` (with extra channels), ``t [B]``
        and the (transformed) ``embeds``."""
        return {}

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        """Hooks active on the UNet's attention modules for the call, which ``context`` describes (see
        :mod:`dreamsmith.guidance.attention`)."""
        return ()

    def time_embedding_delta(self, context: ConditionContext, batch: int) -> Tensor | None:
        """``[batch, D]`` added to the UNet's time embedding (e.g. an MLP of the camera), or None."""
        return None

    def wants_input_grad(self, context: ConditionContext) -> bool:
        """True when :meth:`noise_correction` needs gradients w.r.t. the call's input (the call then runs
        with autograd)."""
        return False

    def noise_correction(self, z_t: Tensor, context: ConditionContext) -> Tensor | None:
        """``[B, C, h, w]`` added to the call's ε̂ once the UNet has run, given the call's input ``z_t``
        (requiring grad when :meth:`wants_input_grad`), or None."""
        return None

    def applied(self, unet: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """A context manager that installs something on ``unet`` (a weight delta) and restores it on exit."""
        return contextlib.nullcontext()


def tile_to_batch(x: Tensor, batch: int) -> Tensor:
    """Repeat ``x [n, ...]`` to ``[batch, ...]`` when ``n`` divides ``batch`` (e.g. both CFG halves)."""
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0] != 0:
        raise ValueError(f"cannot tile a batch of {x.shape[0]} to {batch}")
    return x.repeat(batch // x.shape[0], *([1] * (x.dim() - 1)))


def merge_unet_kwargs(
    contributions: Sequence[dict[str, Any]], reserved: Sequence[str] = ()
) -> dict[str, Any]:
    """Merge conditioners' UNet kwargs: residuals add up, dict kwargs merge, anything else must not
    be given twice (nor collide with the ``reserved`` keys the prior sets itself)."""
    merged: dict[str, Any] = {}
    for kwargs in contributions:
        for key, value in kwargs.items():
            if key in reserved:
                raise ValueError(f"a conditioner may not set the UNet argument {key!r}: the prior sets it")
            if key not in merged:
                merged[key] = dict(value) if key in DICT_KWARGS else value
            elif key in ADDITIVE_KWARGS:
                merged[key] = _add_residuals(merged[key], value)
            elif key in DICT_KWARGS:
                conflicts = merged[key].keys() & value.keys()
                if conflicts:
                    raise ValueError(f"two conditioners set {key}[{sorted(conflicts)[0]!r}]")
                merged[key].update(value)
            else:
                raise ValueError(f"two conditioners set the UNet argument {key!r}")
    return merged


def _add_residuals(a: Tensor | Sequence[Tensor], b: Tensor | Sequence[Tensor]) -> Tensor | tuple[Tensor, ...]:
    if isinstance(a, Tensor):
        return a + b
    return tuple(x + y for x, y in zip(a, b, strict=True))


@contextlib.contextmanager
def all_applied(
    conditioners: Sequence[Conditioner],
    unet: torch.nn.Module,
    context: ConditionContext,
    time_embedding_delta: Tensor | None = None,
) -> Iterator[None]:
    """Enter every conditioner's ``applied(unet)`` in order, activate their attention hooks for the call
    ``context`` describes (chained in the same order) and add ``time_embedding_delta`` to the time
    embedding; undo all on exit."""
    with contextlib.ExitStack() as stack:
        for conditioner in conditioners:
            stack.enter_context(conditioner.applied(unet))
        stack.enter_context(hooks_active(unet, [h for c in conditioners for h in c.attention_hooks(context)]))
        if time_embedding_delta is not None:
            handle = unet.time_embedding.register_forward_hook(
                lambda module, args, output: output + time_embedding_delta.to(output)
            )
            stack.callback(handle.remove)
        yield


ControlSource = Literal["depth", "normal", "opacity"]


def control_image_from_render(render: RenderOutput, source: ControlSource, cameras: Cameras | None) -> Tensor:
    """A control image ``[B, 3, H, W]`` in [0, 1] built from the asset's own render.

    depth: the rendered depth divided by opacity (renders composite depth like colour, so an
    anti-aliased or translucent edge would otherwise read as near), normalized per view over the
    foreground (opacity > 0.5) to [0, 1] with near = bright and the background black (the
    inverse-depth look of MiDaS maps depth ControlNets are trained on);
    normal: camera-space normals (world normals when no cameras) mapped from [−1, 1] to [0, 1],
    background black; opacity: the alpha mask in all three channels.
    """
    foreground = (render.opacity > 0.5).to(render.opacity.dtype)  # [B, H, W, 1]
    if source == "depth":
        depth = surface_depth(render)
        big = torch.finfo(depth.dtype).max
        near = torch.where(foreground > 0, depth, big).amin(dim=(1, 2, 3), keepdim=True)
        far = torch.where(foreground > 0, depth, -big).amax(dim=(1, 2, 3), keepdim=True)
        span = (far - near).clamp(min=1e-6)
        image = ((far - depth) / span).clamp(0, 1) * foreground
        image = image.expand(-1, -1, -1, 3)
    elif source == "normal":
        if render.normal is None:
            raise ValueError("a normal control image needs a render with normals")
        normal = render.normal
        if cameras is not None:
            rotation = cameras.c2w[:, :3, :3].to(normal)  # world = R cam, so cam = Rᵀ world
            normal = torch.einsum("bhwi,bij->bhwj", normal, rotation)
        image = (normal + 1) / 2 * foreground
    elif source == "opacity":
        image = render.opacity.expand(-1, -1, -1, 3)
    else:
        raise ValueError(f"unknown control source {source!r}; choose depth, normal or opacity")
    return image.permute(0, 3, 1, 2).contiguous()


class ControlNetConditioner(Conditioner):
    """Spatial control from a ControlNet fed with the asset's own depth / normal / opacity render.

    Adds ``scale`` × the ControlNet's residuals to the UNet's skip and middle features
    (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models", eq. 2).
    The ControlNet sees the same z_t, t and embeddings as the UNet; the control image is resized
    to the model's image size and tiled to the call's batch (both CFG halves see it).
    """

    def __init__(
        self, controlnet: torch.nn.Module, image_from_render: ControlSource, scale: float = 1.0
    ) -> None:
        self.controlnet = controlnet
        self.image_from_render = image_from_render
        self.scale = scale

    def unet_kwargs(
        self, z_t: Tensor, t: Tensor, embeds: Tensor, context: ConditionContext
    ) -> dict[str, Any]:
        if context.render is None:
            raise ValueError("ControlNetConditioner needs the render in its ConditionContext")
        image = control_image_from_render(context.render, self.image_from_render, context.cameras)
        if context.image_size is not None and image.shape[-2:] != (context.image_size, context.image_size):
            image = torch.nn.functional.interpolate(
                image, size=(context.image_size, context.image_size), mode="bilinear", align_corners=False
            )
        image = tile_to_batch(image, z_t.shape[0]).to(device=z_t.device, dtype=self.controlnet.dtype)
        down, mid = self.controlnet(
            z_t.to(self.controlnet.dtype),
            t,
            encoder_hidden_states=embeds.to(self.controlnet.dtype),
            controlnet_cond=image,
            conditioning_scale=self.scale,
            class_labels=context.class_labels,
            return_dict=False,
        )
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
