"""renderers: how a representation is seen — cameras and rays, volume rendering, mesh rasterization, shading.

Imports only ``dreamsmith.representations``.
"""

from dreamsmith.renderers.cameras import Cameras, look_at_c2w, orbit_cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamsmith.renderers.outputs import RenderOutput
from dreamsmith.renderers.rasterizer import Fragments, antialias, interpolate, rasterize
from dreamsmith.renderers.sdf_tracer import render_sdf
from dreamsmith.renderers.shading import SHADING_MODES, shade
from dreamsmith.renderers.volume import VolumeRenderer, VolumeRendererConfig

__all__ = [
    "SHADING_MODES",
    "Cameras",
    "Fragments",
    "MeshRenderer",
    "MeshRendererConfig",
    "RenderOutput",
    "VolumeRenderer",
    "VolumeRendererConfig",
    "antialias",
    "interpolate",
    "look_at_c2w",
    "orbit_cameras",
    "rasterize",
    "render_sdf",
    "shade",
]
