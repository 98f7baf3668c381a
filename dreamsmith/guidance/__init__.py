"""guidance: what judges the renders — diffusion priors, prompts, conditioners and guidance methods.

Imports only ``dreamsmith.renderers`` (camera and render types) and ``dreamsmith.errors``.
"""

from dreamsmith.guidance.base import Guidance, GuidanceOutput, detached
from dreamsmith.guidance.conditioners import ConditionContext, Conditioner, ControlNetConditioner
from dreamsmith.guidance.ip_adapter import IPAdapterConditioner
from dreamsmith.guidance.loading import load_prior
from dreamsmith.guidance.priors import DiffusionPrior
from dreamsmith.guidance.prompts import PromptCache, view_direction, view_prompt
from dreamsmith.guidance.registry import GUIDANCES
from dreamsmith.guidance.sds import SDSConfig, SDSGuidance
from dreamsmith.guidance.style_aligned import StyleAligned
from dreamsmith.schedules import schedule_value

__all__ = [
    "GUIDANCES",
    "ConditionContext",
    "Conditioner",
    "ControlNetConditioner",
    "DiffusionPrior",
    "Guidance",
    "GuidanceOutput",
    "IPAdapterConditioner",
    "PromptCache",
    "SDSConfig",
    "SDSGuidance",
    "StyleAligned",
    "detached",
    "load_prior",
    "schedule_value",
    "view_direction",
    "view_prompt",
]
