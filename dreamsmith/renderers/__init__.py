"""renderers: how a representation is seen — cameras and rays, volume rendering, mesh rasterization, shading.

Imports only ``dreamsmith.representations``. Public names import on first use (``dreamsmith.lazy``), so
the torch-free configs (``renderers.configs``) load without torch.
"""

from dreamsmith.lazy import lazy_names

_PUBLIC = {
    "SHADING_MODES": "dreamsmith.renderers.shading",
    "Cameras": "dreamsmith.renderers.cameras",
    "Fragments": "dreamsmith.renderers.rasterizer",
    "MeshRenderer": "dreamsmith.renderers.mesh_renderer",
    "MeshRendererConfig": "dreamsmith.renderers.configs",
    "RenderOutput": "dreamsmith.renderers.outputs",
    "VolumeRenderer": "dreamsmith.renderers.volume",
    "VolumeRendererConfig": "dreamsmith.renderers.configs",
    "antialias": "dreamsmith.renderers.rasterizer",
    "interpolate": "dreamsmith.renderers.rasterizer",
    "look_at_c2w": "dreamsmith.renderers.cameras",
    "orbit_cameras": "dreamsmith.renderers.cameras",
    "rasterize": "dreamsmith.renderers.rasterizer",
    "render_sdf": "dreamsmith.renderers.sdf_tracer",
    "shade": "dreamsmith.renderers.shading",
}
__all__ = sorted(_PUBLIC)
__getattr__ = lazy_names(__name__, _PUBLIC)
