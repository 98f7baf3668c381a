"""Run inside the bpy wheel's Python (tests/test_blender_extension.py starts it):

    python generate_in_blender.py ZIP SERVER PROMPT STEPS RESULT_JSON RENDER_PNG

Installs the extension zip as a user would (Blender's own installer), presses "Generate" against a
live `dreamsmith serve`, then reads back what landed in the scene, tries "Texture selected" and
"Edit selected asset", renders one image with Cycles, and writes what it saw as JSON.
The bpy module has no event loop, so this script calls the extension's timer callback itself, as
Blender's loop would, until the callback ends itself.
"""

import json
import sys
import time

import bpy
from mathutils import Vector

zip_path, server, prompt, steps, result_path, render_path = sys.argv[1:7]
result = {}

bpy.ops.wm.read_factory_settings(use_empty=True)
installed = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
result["installed"] = sorted(installed) == ["FINISHED"]
result["enabled"] = "bl_ext.user_default.dreamsmith" in bpy.context.preferences.addons
jobs = sys.modules["bl_ext.user_default.dreamsmith.jobs"]

settings = bpy.context.scene.dreamsmith
settings.server = "http://127.0.0.1:1"  # nothing listens there: the error must reach Blender as a report
try:
    bpy.ops.dreamsmith.generate()
    result["unreachable_report"] = None
except RuntimeError as error:
    result["unreachable_report"] = str(error)

settings.server, settings.prompt, settings.steps, settings.texture_size = server, prompt, int(steps), "512"
started = time.monotonic()
result["generate"] = sorted(bpy.ops.dreamsmith.generate())
seen_progress = []
while True:
    interval = jobs.tick()
    state = bpy.context.window_manager.dreamsmith_job
    seen_progress.append([state.state, round(state.progress, 4), round(state.eta_s, 2), state.preview])
    if interval is None or time.monotonic() - started > 600:
        break
    time.sleep(interval)
state = bpy.context.window_manager.dreamsmith_job
result.update(seconds=time.monotonic() - started, final_state=state.state, final_text=state.text, error=state.error,
              progress=seen_progress, job_id=state.job_id)

collection = bpy.data.collections.get(prompt)
result["collection_objects"] = [obj.name for obj in collection.objects] if collection else None
asset = collection.objects[0] if collection else None
if asset is not None:
    mesh = asset.data
    corners = [asset.matrix_world @ Vector(corner) for corner in asset.bound_box]
    material = mesh.materials[0] if mesh.materials else None
    principled = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None) if material else None
    links = principled.inputs["Base Color"].links if principled else []
    image = links[0].from_node.image if links and links[0].from_node.type == "TEX_IMAGE" else None
    result.update(
        triangles=len(mesh.polygons),
        all_triangles=all(polygon.loop_total == 3 for polygon in mesh.polygons),
        dimensions=list(asset.dimensions),
        world_min=[min(c[i] for c in corners) for i in range(3)],
        world_max=[max(c[i] for c in corners) for i in range(3)],
        base_colour_image=list(image.size) if image else None,
        unit_system=bpy.context.scene.unit_settings.system,
        unit_scale=bpy.context.scene.unit_settings.scale_length,
        job_property=asset.get("dreamsmith_job"),
    )
    bpy.ops.object.select_all(action="DESELECT")
    asset.select_set(True)
    bpy.context.view_layer.objects.active = asset
    for name, operator in (("texture_report", bpy.ops.dreamsmith.texture_selected),
                           ("edit_report", bpy.ops.dreamsmith.edit_selected)):
        settings.edit_instruction = "make it blue"
        try:
            operator()
            result[name] = None
        except RuntimeError as error:
            result[name] = str(error)

    scene = bpy.context.scene
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    centre = sum(corners, Vector()) / 8
    size = max(asset.dimensions)
    camera.location = centre + Vector((1.6, -2.2, 1.3)) * size
    camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.7, 0.2, 0.6)
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.color = (0.35, 0.37, 0.4)
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.render.resolution_x, scene.render.resolution_y = 480, 360
    scene.render.filepath = render_path
    bpy.ops.render.render(write_still=True)
    result["rendered"] = render_path

with open(result_path, "w") as handle:
    json.dump(result, handle, indent=2)
