"""Per-representation stage code behind one protocol: a NeRF (volume rendered), a DMTet (rasterized) and
a UV texture on fixed geometry (rasterized)."""

from __future__ import annotations

from dreamsmith.engine.stages.dmtet import DMTetRepresentation
from dreamsmith.engine.stages.nerf import NeRFRepresentation
from dreamsmith.engine.stages.protocol import Representation
from dreamsmith.engine.stages.texture import TextureRepresentation

REPRESENTATIONS: dict[str, type[Representation]] = {
    "nerf": NeRFRepresentation, "dmtet": DMTetRepresentation, "texture": TextureRepresentation,
}
"""Representation kinds by the name stage configs use (``representation: nerf``)."""

__all__ = ["REPRESENTATIONS", "DMTetRepresentation", "NeRFRepresentation", "Representation", "TextureRepresentation"]
