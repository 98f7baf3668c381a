"""The math of score distillation as pure functions of tensors.

Notation (DreamFusion, Poole et al. 2022, section 2): z_t = α_t z + σ_t ε with α_t = √ᾱ_t,
σ_t = √(1 − ᾱ_t), where ᾱ_t (``alphas_cumprod``) always comes from the model's own scheduler.
Per-sample quantities are ``[B]`` tensors; images and latents are ``[B, C, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SDS_WEIGHTINGS = ("sds", "uniform", "fantasia")


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape ``values [B]`` to ``[B, 1, ..., 1]`` so it broadcasts against ``like [B, ...]``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), each ``[B]``, for integer timesteps ``t [B]`` (DDPM, Ho et al.
    2020)."""
    alpha_bar = alphas_cumprod.to(t.device)[t.long()]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def add_noise(z: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """z_t = α_t z + σ_t ε (DDPM forward process, Ho et al. 2020 eq. 4); ``alpha``, ``sigma``: ``[B]``."""
    return per_sample(alpha, z) * z + per_sample(sigma, z) * eps


def cfg_combine(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance, diffusers form: ε_u + s(ε_y − ε_u) (Ho & Salimans 2022, eq. 6).

    s = 1 gives the conditional prediction ε_y. threestudio's SDS writes ε_y + s'(ε_y − ε_u), which
    is this form with s = s' + 1: a threestudio guidance scale of 100 is 101 here.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_chain(eps: Sequence[Tensor], scales: Sequence[float]) -> Tensor:
    """N-way classifier-free guidance: ε_0 + Σ_k s_k (ε_k − ε_{k−1}) over branches in order.

    Two branches [ε_u, ε_y] with scale s give :func:`cfg_combine` exactly; InstructPix2Pix's three
    [ε_∅, ε_I, ε_{I,T}] with (s_I, s_T) give ε_∅ + s_I(ε_I − ε_∅) + s_T(ε_{I,T} − ε_I) (Brooks et al.
    2023, eq. 3). All scales 1 give the last branch's prediction.
    """
    if len(scales) != len(eps) - 1:
        raise ValueError(f"{len(eps)} branches need {len(eps) - 1} scales, got {len(scales)}")
    guided = eps[0]
    for k in range(1, len(eps)):
        guided = guided + scales[k - 1] * (eps[k] - eps[k - 1])
    return guided


def eps_from_v(v: Tensor, z_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """ε from a v-prediction: ε = α_t v + σ_t z_t (Salimans & Ho 2022, "Progressive distillation", sec. 4).

    With v = α_t ε − σ_t z and z_t = α_t z + σ_t ε; exact for variance-preserving schedules
    (α_t² + σ_t² = 1). ``alpha``, ``sigma``: ``[B]``.
    """
    return per_sample(alpha, v) * v + per_sample(sigma, v) * z_t


def v_from_eps(eps: Tensor, z_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """v from ε: v = (ε − σ_t z_t) / α_t, the inverse of :func:`eps_from_v` (Salimans & Ho 2022, sec. 4)."""
    return (eps - per_sample(sigma, eps) * z_t) / per_sample(alpha, eps)


def sds_weight(kind: str, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """The SDS weighting w(t) ``[B]``.

    ``"sds"``: σ_t² (DreamFusion, Poole et al. 2022, appendix A.4, as in threestudio);
    ``"uniform"``: 1; ``"fantasia"``: α_t σ_t² (Fantasia3D, Chen et al. 2023, eq. 5).
    """
    alpha, sigma = alpha_sigma(alphas_cumprod, t)
    if kind == "sds":
        return sigma**2
    if kind == "uniform":
        return torch.ones_like(alpha)
    if kind == "fantasia":
        return alpha * sigma**2
    raise ValueError(f"unknown SDS weighting {kind!r}; choose one of {', '.join(SDS_WEIGHTINGS)}")


def sds_grad(eps_pred: Tensor, eps: Tensor, w: Tensor) -> Tensor:
    """The SDS gradient with respect to z: w(t)(ε̂(z_t; y, t) − ε) (DreamFusion, Poole et al. 2022, eq. 3)."""
    return per_sample(w, eps_pred) * (eps_pred - eps)


def inject_gradient(z: Tensor, grad: Tensor) -> Tensor:
    """A loss whose gradient with respect to ``z [B, ...]`` is ``grad / B``.

    loss = 0.5 ‖z − sg(z − grad)‖² / B, the detached-target trick of threestudio's SDS: autograd then
    carries the precomputed score-distillation gradient (DreamFusion eq. 3) through the encoder and
    renderer. The loss value itself is 0.5 ‖grad‖² / B, a diagnostic only.
    """
    target = (z - grad).detach()
    return 0.5 * ((z - target) ** 2).sum() / z.shape[0]


def sample_timesteps(
    batch: int,
    t_min_frac: float,
    t_max_frac: float,
    num_train_timesteps: int,
    generator: torch.Generator,
) -> Tensor:
    """Integer timesteps ``[B]`` ~ U[⌊min·T⌋, ⌈max·T⌉] inclusive, clamped to [0, T − 1].

    DreamFusion (Poole et al. 2022, sec. 3) samples t ~ U(0.02, 0.98). The draw uses ``generator``
    and lands on the generator's device.
    """
    low = max(0, math.floor(t_min_frac * num_train_timesteps))
    high = min(num_train_timesteps - 1, math.ceil(t_max_frac * num_train_timesteps))
    if high < low:
        raise ValueError(f"empty timestep range: min fraction {t_min_frac} > max fraction {t_max_frac}")
    return torch.randint(low, high + 1, (batch,), generator=generator, device=generator.device)


def sanitize_grad(grad: Tensor, clip: float | None) -> Tensor:
    """Replace NaN and ±inf by 0 (a non-finite gradient carries no direction), then clamp to ±clip if set.

    The nan-guard and gradient clipping of threestudio's SDS (``grad_clip``).
    """
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        grad = grad.clamp(-clip, clip)
    return grad


def regional_composite(base: Tensor, regional: Tensor, masks: Tensor, base_ratio: float) -> Tensor:
    """RPG's regional cross-attention output (Yang et al. 2024, "Mastering Text-to-Image Diffusion:
    Recaptioning, Planning, and Generating with Multimodal LLMs", section 3.3):

        out = r A_base + (1 − r) (Σ_i m_i A_i + (1 − Σ_i m_i) A_base) = A_base + (1 − r) Σ_i m_i (A_i − A_base)

    base ``A_base [B, L, C]``: the base prompt's cross-attention output; regional ``A_i [R, B, L, C]``: each
    sub-prompt's; masks ``m [B, L, R]`` in [0, 1], scaled down where they overlap to sum to at most 1 (a
    pixel no region covers keeps the base prompt); r: ``base_ratio``.
    """
    masks = masks / masks.sum(-1, keepdim=True).clamp(min=1.0)
    delta = torch.einsum("blr,rblc->blc", masks.to(base), regional - base)
    return base + (1.0 - base_ratio) * delta


def x0_from_eps(z_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The denoised estimate x̂0 = (z_t − σ_t ε̂)/α_t (DDPM, Ho et al. 2020, eq. 15); ``alpha``, ``sigma``: ``[B]``."""
    return (z_t - per_sample(sigma, z_t) * eps) / per_sample(alpha, z_t)


def group_std_rescale(x0: Tensor, x0_reference: Tensor, views_per_group: int, r: float, eps: float = 1e-8) -> Tensor:
    """CFG rescale of x̂0 per group of views (MVDream, Shi et al. 2023, Sec. 4; after Lin et al. 2024, eq. 16).

    x̂0′ = r·x̂0·std(x̂0_ref)/std(x̂0) + (1 − r)·x̂0, each std over all values of one group of
    ``views_per_group`` consecutive samples; ``x0_reference`` is the unguided (conditional) x̂0. r = 0
    leaves x̂0 as it is; r = 1 gives every group the reference's standard deviation.
    """
    batch = x0.shape[0]
    if batch % views_per_group:
        raise ValueError(f"a batch of {batch} is not made of groups of {views_per_group} views")
    groups = batch // views_per_group
    std = x0.reshape(groups, -1).std(dim=1)
    std_reference = x0_reference.reshape(groups, -1).std(dim=1)
    factor = ((std_reference + eps) / (std + eps)).repeat_interleave(views_per_group)
    return r * per_sample(factor, x0) * x0 + (1 - r) * x0


def x0_reconstruction_grad(z: Tensor, x0: Tensor) -> Tensor:
    """The gradient with respect to z of ½‖z − sg(x̂0)‖² per sample: z − x̂0 (MVDream's x0-reconstruction
    loss, Shi et al. 2023, Sec. 4). With x̂0 from ε̂ at the same z_t this is (σ_t/α_t)(ε̂ − ε): SDS with
    w(t) = σ_t/α_t."""
    return z - x0


def p2p_cross_attention(source: Tensor, edited: Tensor, mapper: Tensor, own: Tensor) -> Tensor:
    """Prompt-to-Prompt's edited cross-attention maps (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with
    Cross Attention Control", Sec. 3.2): M'_j = Σ_i M^src_i mapper_ij + own_j M^edit_j over the edited
    prompt's tokens j.

    Word swap: ``mapper`` spreads each source token's map onto the tokens of the word that replaced it, own = 0
    (the edited maps are the source's); refinement: mapper_ij = 1 where edited token j is source token i,
    own_j = 1 for new tokens (which keep their own maps). ``source``, ``edited``: softmax maps
    ``[..., L_q, L_src]`` and ``[..., L_q, L_edit]``; ``mapper [L_src, L_edit]``; ``own [L_edit]``.
    """
    return source @ mapper.to(source) + edited * own.to(edited)


def p2p_reweight(probs: Tensor, equalizer: Tensor) -> Tensor:
    """Prompt-to-Prompt's attention re-weighting (Hertz et al. 2022, Sec. 3.2): each token's column of the
    cross-attention maps ``[..., L_q, L]`` scaled by ``equalizer [L]`` (not renormalised, as in the paper)."""
    return probs * equalizer.to(probs)


def attention_centroid(maps: Tensor) -> Tensor:
    """Self-guidance's centroid of a word's attention maps (Epstein et al. 2023, "Diffusion Self-Guidance
    for Controllable Image Generation", Sec. 3.2): the centre of mass Σ (x, y) A[y, x] / Σ A.

    maps ``[..., H, W]`` ≥ 0 -> ``[..., 2]`` (x, y) as fractions of the image, pixel centres at (i + ½)/W.
    """
    height, width = maps.shape[-2:]
    xs = (torch.arange(width, dtype=maps.dtype, device=maps.device) + 0.5) / width
    ys = (torch.arange(height, dtype=maps.dtype, device=maps.device) + 0.5) / height
    total = maps.sum(dim=(-2, -1)).clamp(min=1e-12)
    x = (maps.sum(dim=-2) * xs).sum(-1) / total
    y = (maps.sum(dim=-1) * ys).sum(-1) / total
    return torch.stack([x, y], dim=-1)


def soft_threshold(maps: Tensor, sharpness: float = 10.0) -> Tensor:
    """Self-guidance's shape of an object: its attention map thresholded (Sec. 3.2), made differentiable as
    sigmoid(k (A / max A − ½)) per map. maps ``[..., H, W]`` ≥ 0 -> the same shape, in (0, 1)."""
    peak = maps.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)
    return torch.sigmoid(sharpness * (maps / peak - 0.5))


def attention_size(maps: Tensor, sharpness: float = 10.0) -> Tensor:
    """Self-guidance's size: the fraction of the image the thresholded map covers, (1/HW) Σ shape(A)
    (Sec. 3.2). maps ``[..., H, W]`` -> ``[...]``."""
    return soft_threshold(maps, sharpness).mean(dim=(-2, -1))


def self_guidance_energy(kind: str, maps: Tensor, target: Tensor, sharpness: float = 10.0) -> Tensor:
    """The energy g of one property against its target, an L1 distance (Epstein et al. 2023, eq. 4-6):

    centroid: Σ |centroid(A) − target| (target ``[..., 2]``); size: |size(A) − s| (target ``[...]``);
    shape: mean |shape(A) − M| (target a mask ``[..., H, W]``). maps ``[..., H, W]`` -> ``[...]``.
    """
    if kind == "centroid":
        return (attention_centroid(maps) - target).abs().sum(-1)
    if kind == "size":
        return (attention_size(maps, sharpness) - target).abs()
    if kind == "shape":
        return (soft_threshold(maps, sharpness) - target).abs().mean(dim=(-2, -1))
    raise ValueError(f"unknown self-guidance property {kind!r}; choose centroid, size or shape")


def self_guidance_noise(energy_grad: Tensor, sigma: Tensor, weight: float) -> Tensor:
    """The term self-guidance adds to the guided noise prediction, v σ_t ∇_{z_t} g (Epstein et al. 2023, eq. 3:
    ε̃ = (1 + s) ε(z_t; y) − s ε(z_t; ∅) + v σ_t ∇_{z_t} g). Since x̂0 = (z_t − σ_t ε̃)/α_t, it moves x̂0 by
    −(σ_t²/α_t) v ∇g: down the energy. energy_grad ``[B, C, h, w]``, sigma ``[B]``."""
    return weight * per_sample(sigma, energy_grad) * energy_grad


def adain(x: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance normalisation over the token dimension (Huang & Belongie 2017; StyleAligned, Hertz et al.
    2023, eq. 3): (x − μ(x)) / σ(x) · σ(ref) + μ(ref), statistics per channel over dim −2 of ``[..., L, d]``
    (σ = √(var + eps)); ``reference`` broadcasts against ``x``."""
    mean, std = x.mean(dim=-2, keepdim=True), (x.var(dim=-2, keepdim=True) + eps).sqrt()
    ref_mean, ref_std = reference.mean(dim=-2, keepdim=True), (reference.var(dim=-2, keepdim=True) + eps).sqrt()
    return (x - mean) / std * ref_std + ref_mean


def ddim_step(
    z_t: Tensor, eps: Tensor, alpha_bar_t: Tensor, alpha_bar_prev: Tensor, clip: float | None = None
) -> Tensor:
    """One deterministic DDIM step (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12, η = 0):

        z_prev = √ᾱ_prev x̂0 + √(1 − ᾱ_prev) ε̂,   x̂0 = (z_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t

    ``alpha_bar_t``, ``alpha_bar_prev``: ``[B]`` (ᾱ_prev = 1 gives x̂0 itself); ``clip``: x̂0 clamped to ±clip
    first (a scheduler's ``clip_sample``), ε̂ left as predicted, as diffusers' DDIMScheduler does.
    """
    x0 = x0_from_eps(z_t, eps, alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt())
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return per_sample(alpha_bar_prev.sqrt(), x0) * x0 + per_sample((1 - alpha_bar_prev).sqrt(), eps) * eps


def photometric_loss(rgb: Tensor, target: Tensor, kind: str) -> Tensor:
    """The mean per-pixel colour error of renders against target images (Instruct-NeRF2NeRF fits its NeRF to the
    edited dataset with L1, Haque et al. 2023, Sec. 4): ``"l1"`` mean |x − y|, ``"l2"`` mean (x − y)²."""
    if kind == "l1":
        return (rgb - target).abs().mean()
    if kind == "l2":
        return ((rgb - target) ** 2).mean()
    raise ValueError(f"unknown photometric loss {kind!r}; choose l1 or l2")


def denoising_error(eps_pred: Tensor, eps: Tensor) -> Tensor:
    """‖ε̂ − ε‖² averaged over each sample's elements, ``[B]``: the diffusion training loss per image
    (DDPM's simple loss, Ho et al. 2020 eq. 14)."""
    return (eps_pred.float() - eps.float()).pow(2).flatten(1).mean(1)


def dco_loss(error: Tensor, error_ref: Tensor, beta: float) -> Tensor:
    """Direct Consistency Optimization (Lee et al. 2024): −log σ(−β[‖ε_θ − ε‖² − ‖ε_ref − ε‖²]),
    mean over ``[B]`` per-sample errors (:func:`denoising_error`). ε_ref is the base model: at init
    (ε_θ = ε_ref) the loss is log 2 and its gradient (β/2)∇‖ε_θ − ε‖², a scaled plain loss."""
    return torch.nn.functional.softplus(beta * (error - error_ref.detach())).mean()


def prior_preservation_loss(error_instance: Tensor, error_class: Tensor, weight: float) -> Tensor:
    """DreamBooth (Ruiz et al. 2023, eq. 2): the subject's denoising loss plus ``weight`` × that of class
    images the base model made (λ = 0: the plain loss)."""
    loss = error_instance.mean()
    return loss + weight * error_class.mean() if weight else loss


def reward_guidance(eps_guided: Tensor, eps_cond: Tensor, eps_base_cond: Tensor, reward_scale: float) -> Tensor:
    """DCO's reward guidance (Lee et al. 2024): the guided prediction plus w(ε_adapted(y) − ε_base(y)), the
    implicit reward of a consistency-trained adapter over its base model (the same UNet with the adapter at
    scale 0); w = 0 leaves ``eps_guided`` as it is."""
    return eps_guided + reward_scale * (eps_cond - eps_base_cond) if reward_scale else eps_guided


def reward_guided_eps(eps_uncond: Tensor, eps_cond: Tensor, eps_base_cond: Tensor, scale: float,
                      reward_scale: float) -> Tensor:
    """Classifier-free guidance (:func:`cfg_combine`) with DCO's :func:`reward_guidance` term; w = 0 is CFG."""
    return reward_guidance(cfg_combine(eps_cond, eps_uncond, scale), eps_cond, eps_base_cond, reward_scale)
