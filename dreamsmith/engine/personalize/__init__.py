"""Personalization: learn a subject from a few images into an adapter folder (``dreamsmith personalize``)."""

from dreamsmith.engine.personalize.config import PersonalizeConfig
from dreamsmith.engine.personalize.run import personalize

__all__ = ["PersonalizeConfig", "personalize"]
