"""Words of a prompt that options name (``--reweight fluffy=2.0``): parsed and checked without torch."""

from __future__ import annotations

import math
import re

from dreamsmith.errors import ConfigError


def parse_reweight(text: str) -> tuple[str, float]:
    """``"WORD=WEIGHT"`` -> (word, weight); a one-line error for anything else."""
    word, _, weight = text.partition("=")
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not word.strip() or " " in word.strip() or not math.isfinite(value) or value < 0:
        raise ConfigError(f"--reweight {text!r} is not WORD=WEIGHT with a weight >= 0, e.g. --reweight fluffy=2.0")
    return word.strip(), value


def check_reweight(prompt: str, weights: dict[str, float]) -> None:
    """Every re-weighted word is a word of ``prompt``; one line naming the first that is not."""
    words = prompt.split()
    for word in weights:
        if word not in words:
            raise ConfigError(
                f"--reweight '{word}' is not a word of the prompt '{prompt}'; choose one of {', '.join(words)}"
            )


def trigger_pattern(trigger: str) -> re.Pattern[str]:
    """A class word (group 1) followed by the trigger word (PhotoMaker's ``"a man img"``), as whole words."""
    return re.compile(rf"(\S+)\s+{re.escape(trigger)}(?![^\s,.;:!?])")


def has_trigger(prompt: str, trigger: str) -> bool:
    """Whether ``prompt`` holds the trigger word after a class word."""
    return trigger_pattern(trigger).search(prompt) is not None


def without_trigger(prompt: str, trigger: str, copies: int) -> str:
    """``prompt`` with "CLASS TRIGGER" written as ``copies`` copies of CLASS (PhotoMaker's token edit, in words)."""
    return trigger_pattern(trigger).sub(lambda match: " ".join([match.group(1)] * copies), prompt)
