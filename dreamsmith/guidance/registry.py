"""Guidance methods by the name presets use (``guidance.name``), filled explicitly."""

from __future__ import annotations

from dreamsmith.guidance.base import Guidance
from dreamsmith.guidance.dreamflow import DreamFlowGuidance
from dreamsmith.guidance.in2n import IN2NGuidance
from dreamsmith.guidance.ip2p import IP2PGuidance
from dreamsmith.guidance.mvdream import MVDreamGuidance
from dreamsmith.guidance.p2p import P2PGuidance
from dreamsmith.guidance.sds import SDSGuidance
from dreamsmith.guidance.vsd import VSDGuidance

GUIDANCES: dict[str, type[Guidance]] = {
    "sds": SDSGuidance,
    "vsd": VSDGuidance,
    "dreamflow": DreamFlowGuidance,
    "mvdream": MVDreamGuidance,
    "ip2p": IP2PGuidance,
    "in2n": IN2NGuidance,
    "p2p": P2PGuidance,
}
