"""representations: what is optimized — NeRF fields on hash grids, DMTet, meshes, backgrounds.

Imports nothing else of dreamsmith.
"""

from dreamsmith.representations.background import Background, BackgroundConfig
from dreamsmith.representations.dmtet import DMTet, DMTetConfig
from dreamsmith.representations.hashgrid import HashGrid, HashGridConfig
from dreamsmith.representations.mesh import Mesh
from dreamsmith.representations.nerf import NeRFConfig, NeRFField

__all__ = [
    "Background",
    "BackgroundConfig",
    "DMTet",
    "DMTetConfig",
    "HashGrid",
    "HashGridConfig",
    "Mesh",
    "NeRFConfig",
    "NeRFField",
]
