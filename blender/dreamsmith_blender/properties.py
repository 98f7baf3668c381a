"""The panel's settings (saved with the .blend file) and the running job's state (not saved)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty

PRESETS = [
    ("DEFAULT", "Default", "The server's choice: toy without a model, else dreamfusion"),
    ("toy", "toy", "The embedded prior, NeRF only (CPU-sized)"),
    ("toy-mesh", "toy-mesh", "The embedded prior, NeRF then DMTet"),
    ("dreamfusion", "dreamfusion", "Latent models such as Stable Diffusion"),
    ("dreamfusion-if", "dreamfusion-if", "Pixel-space models such as DeepFloyd IF"),
    ("magic3d", "magic3d", "NeRF coarse, then DMTet fine"),
]
TEXTURE_SIZES = [(str(size), f"{size} px", f"{size}x{size} base-colour texture") for size in (512, 1024, 2048, 4096)]


class DreamsmithSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. 'a red cube'", default="a red cube")
    preset: EnumProperty(name="Preset", items=PRESETS, default="DEFAULT")
    model: StringProperty(name="Model", description="Diffusion model on the server: a folder or Hugging Face id "
                          "(empty: the preset's)", default="")
    steps: IntProperty(name="Steps", description="Optimization steps of the last stage (0: the preset's)", default=0,
                       min=0, max=1_000_000)
    seed: IntProperty(name="Seed", description="Random seed: same seed, same asset", default=0, min=0)
    texture_size: EnumProperty(name="Texture", items=TEXTURE_SIZES, default="1024")
    max_triangles: IntProperty(name="Triangles", description="Triangle budget (0: keep all)", default=0, min=0,
                               max=10_000_000)
    lods: IntProperty(name="LODs", description="Further levels of detail, imported as hidden children", default=0,
                      min=0, max=4)
    edit_instruction: StringProperty(name="Edit", description="What to change in the selected asset", default="")
    server: StringProperty(name="Server", description="Address of `dreamsmith serve`", default="http://127.0.0.1:8642")
    token: StringProperty(name="Token", description="The server's --token, if it has one", default="",
                          subtype="PASSWORD")


class DreamsmithJobState(bpy.types.PropertyGroup):
    job_id: StringProperty(name="Job")
    state: StringProperty(name="State", default="")
    progress: FloatProperty(name="Progress", min=0.0, max=1.0, default=0.0)
    eta_s: FloatProperty(name="ETA", default=-1.0)
    text: StringProperty(name="Status", default="")
    preview: StringProperty(name="Preview", description="The latest preview PNG, downloaded", default="")
    preview_icon: IntProperty(name="Preview icon", default=0)
    error: StringProperty(name="Error", default="")


CLASSES = (DreamsmithSettings, DreamsmithJobState)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.dreamsmith = bpy.props.PointerProperty(type=DreamsmithSettings)
    bpy.types.WindowManager.dreamsmith_job = bpy.props.PointerProperty(type=DreamsmithJobState)


def unregister() -> None:
    del bpy.types.WindowManager.dreamsmith_job
    del bpy.types.Scene.dreamsmith
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)


def generate_request(settings: DreamsmithSettings) -> dict:
    """The server's GenerateRequest for the panel's settings."""
    request = {"prompt": settings.prompt.strip(), "seed": settings.seed, "texture_size": int(settings.texture_size),
               "lods": settings.lods}
    if settings.preset != "DEFAULT":
        request["preset"] = settings.preset
    if settings.model.strip():
        request["model"] = settings.model.strip()
    if settings.steps:
        request["steps"] = settings.steps
    if settings.max_triangles:
        request["max_triangles"] = settings.max_triangles
    return request
