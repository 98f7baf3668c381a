"""Guidance methods by the name presets use (``guidance.name``), filled explicitly."""

from __future__ import annotations

from dreamsmith.guidance.base import Guidance
from dreamsmith.guidance.sds import SDSGuidance

GUIDANCES: dict[str, type[Guidance]] = {
    "sds": SDSGuidance,
}
