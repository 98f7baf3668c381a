"""Per-representation stage code behind one protocol: a NeRF (volume rendered) and a DMTet (rasterized)."""

from __future__ import annotations

from dreamsmith.engine.stages.dmtet import DMTetRepresentation
from dreamsmith.engine.stages.nerf import NeRFRepresentation
from dreamsmith.engine.stages.protocol import Representation

REPRESENTATIONS: dict[str, type[Representation]] = {"nerf": NeRFRepresentation, "dmtet": DMTetRepresentation}
"""Representation kinds by the name stage configs use (``representation: nerf``)."""

__all__ = ["REPRESENTATIONS", "DMTetRepresentation", "NeRFRepresentation", "Representation"]
