"""A guidance's own training: the optimizer of parameters a guidance fits during the run (VSD's and
DreamFlow's LoRA particle score), separate from the asset's optimizer.

The engine steps the asset first, then calls ``guidance.update(output, step, generator)``; the
guidance zeroes, computes its own loss, and steps its own AdamW here. Trainable parameters are kept
in fp32 even when the prior runs in fp16 (ProlificDreamer trains its LoRA in fp32), and the whole
state (parameters, AdamW moments, warm-up position) goes into the run's checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class GuidanceOptimConfig:
    """The optimizer a guidance owns for its own parameters."""

    lr: float = 1e-4
    """AdamW learning rate after warm-up (ProlificDreamer's LoRA: 1e-4)."""
    warmup_steps: int = 500
    """Linear warm-up from 0 to ``lr`` over this many updates (ProlificDreamer: 500)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""


class GuidanceOptimizer:
    """AdamW with a linear warm-up over fp32 parameters, checkpointed whole."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], config: GuidanceOptimConfig) -> None:
        self.parameters = list(parameters)
        for parameter in self.parameters:
            if parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
        self.config = config
        self.optimizer = torch.optim.AdamW(
            self.parameters, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
        )
        self.updates = 0
        self._set_lr()

    def _set_lr(self) -> None:
        warmup = self.config.warmup_steps
        fraction = 1.0 if warmup <= 0 else min(1.0, (self.updates + 1) / warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * fraction

    def step(self, loss: torch.Tensor) -> None:
        """One update of the guidance's parameters from ``loss`` (zeroes the gradients first)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        self._set_lr()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self._set_lr()
