"""Multi-view attention (MVDream, Shi et al. 2023, Sec. 3.1): the F views of a group attend to each other.

In each self-attention of the UNet's transformer blocks the tokens of the F views of one object are
folded into one sequence, ``(b f) l c -> b (f l) c``, before the query/key/value projections, and
unfolded after the attention, ``b (f l) c -> (b f) l c``, before the output projection (which acts
per token, so it may come on either side). Cross-attention to the text stays per view. With F = 1
nothing is folded and the result is the model's own attention, bit for bit.

The hook rides the processor stack of :mod:`dreamsmith.guidance.attention`, so it composes with any
other attention technique. A multi-view model names it in its ``dreamsmith.json``
(``"attention": "multiview", "views_per_group": F``); the prior then applies it to every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from dreamsmith.errors import ModelLoadError
from dreamsmith.guidance.attention import AttentionHook
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner

MULTIVIEW = "multiview"
"""The ``attention`` value of a multi-view model's ``dreamsmith.json``."""


class MultiViewAttention(AttentionHook):
    """Folds the ``views`` consecutive samples of each group into one sequence in self-attention.

    The call's batch must be made of whole groups, group-major (views ``k·F … k·F + F − 1`` are one
    object), as the engine samples them and as every classifier-free-guidance branch repeats them.
    """

    def __init__(self, views: int) -> None:
        if views < 1:
            raise ValueError(f"a group has at least one view, got {views}")
        self.views = views

    def applies_to(self, name: str, attn: Any) -> bool:
        return not attn.is_cross_attention

    def hidden_states(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        batch, length, channels = hidden_states.shape
        if batch % self.views:
            raise ValueError(f"multi-view attention over groups of {self.views} views got a batch of {batch}: "
                             "render whole groups")
        context["views_length"] = length
        return hidden_states.reshape(batch // self.views, self.views * length, channels)

    def output(self, attn: Any, hidden_states: Tensor, context: dict[str, Any]) -> Tensor:
        groups, _, channels = hidden_states.shape
        return hidden_states.reshape(groups * self.views, context["views_length"], channels)


class MultiViewConditioner(Conditioner):
    """The multi-view attention of a model trained with it, as a conditioner on the prior's call."""

    def __init__(self, views: int) -> None:
        self.hook = MultiViewAttention(views)

    @property
    def views(self) -> int:
        return self.hook.views

    def attention_hooks(self, context: ConditionContext) -> Sequence[AttentionHook]:
        return (self.hook,)


def model_conditioners(metadata: dict[str, Any], source: str = "dreamsmith.json") -> list[Conditioner]:
    """The conditioners a model's ``dreamsmith.json`` says it was trained with (its multi-view
    attention), applied by its prior to every call; [] for a plain model."""
    attention = metadata.get("attention")
    if attention is None:
        return []
    if attention != MULTIVIEW:
        raise ModelLoadError(f"{source}: unknown attention {attention!r}; supported: {MULTIVIEW}")
    views = metadata.get("views_per_group")
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
        raise ModelLoadError(f"{source}: multiview attention needs views_per_group, a whole number of views "
                             f"of one object the model sees together (MVDream: 4), got {views!r}")
    return [MultiViewConditioner(views)]

