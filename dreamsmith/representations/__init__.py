"""representations: what is optimized — NeRF fields on hash grids, DMTet, meshes, backgrounds.

Imports nothing else of dreamsmith. Public names import on first use (``dreamsmith.lazy``), so the
torch-free configs (``representations.configs``) load without torch.
"""

from dreamsmith.lazy import lazy_names

_PUBLIC = {
    "Background": "dreamsmith.representations.background",
    "BackgroundConfig": "dreamsmith.representations.configs",
    "DMTet": "dreamsmith.representations.dmtet",
    "DMTetConfig": "dreamsmith.representations.configs",
    "HashGrid": "dreamsmith.representations.hashgrid",
    "HashGridConfig": "dreamsmith.representations.configs",
    "Mesh": "dreamsmith.representations.mesh",
    "NeRFConfig": "dreamsmith.representations.configs",
    "NeRFField": "dreamsmith.representations.nerf",
    "TextureConfig": "dreamsmith.representations.configs",
    "UVTexture": "dreamsmith.representations.uv_texture",
}
__all__ = sorted(_PUBLIC)
__getattr__ = lazy_names(__name__, _PUBLIC)
