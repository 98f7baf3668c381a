"""The settings of one personalization (``dreamsmith personalize``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dreamsmith.errors import ConfigError

Method = Literal["textual-inversion", "dreambooth", "lora", "dco"]
DEFAULT_LEARNING_RATES = {"textual-inversion": 5e-3, "dreambooth": 1e-3, "lora": 1e-3, "dco": 1e-3}


@dataclass
class PersonalizeConfig:
    """How a subject is learned from a few images of it."""

    method: Method = "lora"
    """textual-inversion: one new word; lora: a UNet LoRA + the word; dreambooth: the same with prior
    preservation on class images the base model makes; dco: a LoRA + the word trained to stay consistent
    with the base model (Direct Consistency Optimization)."""
    token: str = "<sks>"
    """The new word that names the subject in prompts."""
    class_word: str = ""
    """What the subject is (a word the model knows, e.g. sphere): the word's embedding starts the token's."""
    steps: int = 400
    """Optimization steps."""
    model: str = "embedded:toyworld"
    """The base model: a diffusers folder, a Hugging Face id or embedded:NAME."""
    learning_rate: float | None = None
    """AdamW learning rate (default: 5e-3 for textual-inversion, 1e-3 for the LoRA methods)."""
    lora_rank: int = 4
    """Rank of the UNet LoRA (α = rank, so scale 1 is the plain delta)."""
    batch_size: int = 4
    """Subject images per step (and class images per step for dreambooth)."""
    prior_weight: float = 1.0
    """dreambooth: λ, the weight of the class images' loss (0: the plain loss)."""
    class_images: int = 16
    """dreambooth: class images sampled from the base model (``class_prompt``), cached."""
    class_prompt: str = ""
    """The prompt of the class images and of the card's base-model row (default: "a CLASS_WORD"); a model that
    only knows full captions draws its class better from one of them (e.g. "a red sphere" on toyworld)."""
    dco_beta: float = 1000.0
    """dco: β of the consistency loss (DCO's default)."""
    reward_scale: float = 1.0
    """dco: w of the reward guidance in the sample grid (0: plain classifier-free guidance)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance of the sample grid and class images."""
    sample_steps: int = 25
    """DDIM steps of the sample grid and class images."""
    checkpoint_every: int = 50
    """Steps between checkpoints (the last step always writes one)."""
    seed: int = 0
    """Random seed (same seed, same device: same adapter)."""
    device: str = "auto"
    """auto, cpu or cuda."""

    def __post_init__(self) -> None:
        if self.method not in DEFAULT_LEARNING_RATES:
            raise ConfigError(f"--method must be one of {', '.join(DEFAULT_LEARNING_RATES)}, got {self.method!r}")
        if not self.class_word or self.class_word.split() != [self.class_word]:
            raise ConfigError(f"--class-word must be one word the model knows (e.g. sphere), got {self.class_word!r}")
        for name in ("steps", "lora_rank", "batch_size", "class_images", "sample_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.prior_weight < 0 or self.dco_beta <= 0:
            raise ConfigError("prior-weight must be >= 0 and dco-beta > 0")

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    @property
    def uses_lora(self) -> bool:
        return self.method != "textual-inversion"

    def instance_prompts(self) -> list[str]:
        """The prompts the subject images are captioned with, drawn in turn."""
        return [f"a {self.token} {self.class_word}", f"a {self.token}"]

    def class_text(self) -> str:
        return self.class_prompt or f"a {self.class_word}"
