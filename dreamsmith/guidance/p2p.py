"""Prompt-to-Prompt (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control") as an
attention controller in the processor stack, and the ``p2p`` guidance that distils with it.

The source prompt's branch and the edited prompt's branch of one model call share z_t. In every
cross-attention layer the edited branch's softmax maps are replaced by the source branch's, mapped onto the
edited prompt's tokens (:mod:`dreamsmith.guidance.p2p_tokens`: a word swap, or a refinement whose new tokens
keep their own maps), for the first τ of the denoising range (t ≥ (1 − τ)T, ``cross_replace`` = τ), so the
edit keeps the source's layout; re-weighting then scales chosen tokens' maps. The ``p2p`` guidance is SDS
towards the edited prompt, ε_u + s(ε_edit − ε_u), with the source branch in the same call for its maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from torch import Tensor

from dreamsmith.configs import Range
from dreamsmith.guidance.attention import AttentionHook
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner
from dreamsmith.guidance.distillation import Branch, DistillationState
from dreamsmith.guidance.math import cfg_chain, p2p_cross_attention, p2p_reweight
from dreamsmith.guidance.p2p_tokens import edit_mapper, equalizer
from dreamsmith.guidance.sds import SDSConfig, SDSGuidance
from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.schedules import ScheduleSpec, schedule_value

SOURCE_BRANCH = "source"
EDITED_BRANCH = "cond"


class CrossAttentionControl(AttentionHook):
    """Rewrites the edited samples' cross-attention maps of one call.

    pairs: ``[P, 2]`` (source sample, edited sample) indices of the call; replace: ``[P]`` True where the pair's
    maps are replaced (its t within the first τ); mapper ``[L, L]``, own ``[L]``: see
    :func:`~dreamsmith.guidance.math.p2p_cross_attention`; scale: ``[L]`` re-weighting of the edited maps, or None.
    """

    needs_probabilities = True

    def __init__(
        self, pairs: Tensor, replace: Tensor, mapper: Tensor | None, own: Tensor | None, scale: Tensor | None
    ) -> None:
        self.pairs, self.replace, self.mapper, self.own, self.scale = pairs, replace, mapper, own, scale

    def applies_to(self, name: str, attn: Any) -> bool:
        return bool(attn.is_cross_attention)

    def probabilities(self, attn: Any, probs: Tensor, context: dict[str, Any]) -> Tensor:
        source, edited = self.pairs[:, 0].to(probs.device), self.pairs[:, 1].to(probs.device)
        maps = probs[edited]
        if self.mapper is not None and self.replace.any():
            mapped = p2p_cross_attention(probs[source], maps, self.mapper, self.own)
            maps = torch.where(self.replace.to(probs.device).view(-1, 1, 1, 1), mapped, maps)
        if self.scale is not None:
            maps = p2p_reweight(maps, self.scale)
        out = probs.clone()
        out[edited] = maps
        return out


class PromptToPrompt(Conditioner):
    """The controller of a call whose samples are labelled ``"source"`` and ``"cond"`` (the same count of each,
    in the same view order). ``mapper``/``own`` (None: no replacement), ``scale`` (None: no re-weighting);
    with neither, or no pair within the replacement range and no re-weighting, it installs nothing: the model's
    own attention, bit for bit."""

    def __init__(
        self,
        mapper: Tensor | None = None,
        own: Tensor | None = None,
        scale: Tensor | None = None,
        cross_replace: float = 0.8,
        num_train_timesteps: int = 1000,
    ) -> None:
        self.mapper, self.own, self.scale = mapper, own, scale
        self.cross_replace = cross_replace
        self.num_train_timesteps = num_train_timesteps

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        labels = context.branch_labels
        edited = [i for i, label in enumerate(labels) if label == EDITED_BRANCH]
        source = [i for i, label in enumerate(labels) if label == SOURCE_BRANCH]
        if (self.mapper is None and self.scale is None) or not edited:
            return ()
        if self.mapper is not None and len(source) != len(edited):
            raise ValueError(
                f"Prompt-to-Prompt needs a source sample for each edited one: {len(source)} and "
                f"{len(edited)} in the call"
            )
        pairs = torch.tensor(list(zip(source or edited, edited, strict=True)))
        replace = torch.zeros(len(edited), dtype=torch.bool)
        if context.timesteps is not None and self.mapper is not None:
            threshold = (1.0 - self.cross_replace) * self.num_train_timesteps
            replace = context.timesteps[pairs[:, 1].to(context.timesteps.device)].cpu() >= threshold
        if not replace.any() and self.scale is None:
            return ()  # outside the replacement range: the model's own attention, bit for bit
        return [CrossAttentionControl(pairs, replace, self.mapper, self.own, self.scale)]


@dataclass
class P2PConfig(SDSConfig):
    """Prompt-to-Prompt score distillation: the run's PROMPT is the edited prompt ("a blue cube")."""

    guidance_scale: Annotated[ScheduleSpec, Range(0, None)] = 7.5
    """Classifier-free guidance scale of the edited prompt: a number or a schedule."""
    source_prompt: str = ""
    """The prompt the source asset was made from ("a red cube"), whose cross-attention maps are injected; empty:
    no injection (SDS with ``reweight`` alone)."""
    cross_replace: Annotated[float, Range(0, 1)] = 0.8
    """τ: the maps are replaced for t ≥ (1 − τ)T, the first τ of the denoising range (1: always; 0: never)."""
    reweight: dict[str, float] = field(default_factory=dict)
    """Words of the edited prompt and the factor their cross-attention is scaled by, e.g. {fluffy: 2.0}."""
    view_dependent_prompting: bool = False
    """Append view words to both prompts (off: the word maps of the two prompts stay aligned)."""


class P2PGuidance(SDSGuidance):
    """SDS towards the edited prompt with the source prompt's cross-attention injected; without a source prompt,
    SDS with the re-weighted words alone."""

    config_class = P2PConfig

    def __init__(self, prior: Any, config: P2PConfig, conditioners: Any = ()) -> None:
        length = prior.max_prompt_tokens()
        mapper = own = scale = None
        if config.source_prompt.strip():
            mapper, own = edit_mapper(prior.tokenizer, config.source_prompt, config.prompt, length)
        if config.reweight:
            scale = equalizer(prior.tokenizer, config.prompt, config.reweight, length)
        control = PromptToPrompt(mapper, own, scale, config.cross_replace, prior.num_train_timesteps)
        super().__init__(prior, config, [control, *conditioners])

    def branches(
        self, render: RenderOutput, cameras: Cameras, step: int, source: RenderOutput | None = None
    ) -> list[Branch]:
        """[uncond, source (for its maps only, when there is a source prompt), cond at the scheduled scale]."""
        config = self.config
        directions = self.view_directions(cameras)
        source_branch = []
        if config.source_prompt.strip():
            source_embeds = self.prompts.text_embeddings(config.source_prompt, directions)
            source_branch = [Branch(SOURCE_BRANCH, source_embeds, scale=0.0)]
        return [
            Branch("uncond", self.prompts.negative_embeddings(config.negative_prompt, len(cameras))),
            *source_branch,
            Branch(
                EDITED_BRANCH,
                self.prompts.text_embeddings(config.prompt, directions),
                scale=schedule_value(config.guidance_scale, step),
            ),
        ]

    def combine(self, branches: list[Branch], eps: dict[str, Tensor], step: int) -> Tensor:
        """ε_u + s(ε_edit − ε_u): the source branch only lends its maps."""
        return cfg_chain([eps["uncond"], eps[EDITED_BRANCH]], [branches[-1].scale])

    def extra_logs(self, state: DistillationState) -> dict[str, float]:
        return {"cross_replace": float(self.config.cross_replace)}
