"""Generate, Cancel, Texture selected, Edit selected asset: each one request to the server."""

from __future__ import annotations

import tempfile
from pathlib import Path

import bpy

from . import jobs
from .client import Client, ServerError
from .properties import generate_request


def _client(context: bpy.types.Context) -> Client:
    settings = context.scene.dreamsmith
    return checked(Client(settings.server, settings.token))


def checked(client: Client) -> Client:
    """``client``, unless it would go online while Blender's "Allow Online Access" is off (this machine's
    own server is not online access)."""
    if not client.is_local() and not bpy.app.online_access:
        raise ServerError(f"{client.address} is not on this machine and Blender's Allow Online Access is off "
                          "(Preferences > System > Network)")
    return client


class ServerOperator(bpy.types.Operator):
    """One request to the server; its refusals and connection errors become Blender error reports."""

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            return self.request(context)
        except ServerError as error:
            self.report({"ERROR"}, str(error))
            return {"CANCELLED"}

    def request(self, context: bpy.types.Context) -> set[str]:
        raise NotImplementedError


class DREAMSMITH_OT_generate(ServerOperator):
    """Make an asset from the prompt on the dreamsmith server, then import it"""

    bl_idname = "dreamsmith.generate"
    bl_label = "Generate"

    def request(self, context: bpy.types.Context) -> set[str]:
        request = generate_request(context.scene.dreamsmith)
        if not request["prompt"]:
            raise ServerError("write a prompt first")
        client = _client(context)
        job = client.submit(request)
        jobs.start(client, job, request)
        self.report({"INFO"}, f"dreamsmith job {job['id'][:8]} queued")
        return {"FINISHED"}


class DREAMSMITH_OT_cancel(ServerOperator):
    """Stop the running job at the next step (it keeps a checkpoint and can be resumed)"""

    bl_idname = "dreamsmith.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.window_manager.dreamsmith_job.state in ("queued", "running")

    def request(self, context: bpy.types.Context) -> set[str]:
        _client(context).cancel(context.window_manager.dreamsmith_job.job_id)
        return {"FINISHED"}


class DREAMSMITH_OT_texture_selected(ServerOperator):
    """Export the selected mesh as GLB and ask the server to texture it from the prompt"""

    bl_idname = "dreamsmith.texture_selected"
    bl_label = "Texture selected"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return any(obj.type == "MESH" for obj in context.selected_objects)

    def request(self, context: bpy.types.Context) -> set[str]:
        client = _client(context)
        with tempfile.TemporaryDirectory(prefix="dreamsmith-") as folder:
            path = Path(folder) / "selected.glb"
            bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True)
            job = client.texture(path.read_bytes(), context.scene.dreamsmith.prompt)
        jobs.start(client, job, {"prompt": context.scene.dreamsmith.prompt, "lods": 0})
        return {"FINISHED"}


class DREAMSMITH_OT_edit_selected(ServerOperator):
    """Ask the server to edit the selected asset (one dreamsmith made) by the edit instruction"""

    bl_idname = "dreamsmith.edit_selected"
    bl_label = "Edit selected asset"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.active_object is not None and "dreamsmith_job" in context.active_object

    def request(self, context: bpy.types.Context) -> set[str]:
        settings = context.scene.dreamsmith
        if not settings.edit_instruction.strip():
            raise ServerError("write what to change in the Edit field first")
        asset = context.active_object
        client = checked(Client(asset.get("dreamsmith_server") or settings.server, settings.token))
        job = client.edit(asset["dreamsmith_job"], settings.edit_instruction.strip())
        prompt = f"{asset['dreamsmith_prompt']} ({settings.edit_instruction.strip()})"
        jobs.start(client, job, {"prompt": prompt, "lods": 0})
        return {"FINISHED"}


class DREAMSMITH_OT_report(bpy.types.Operator):
    """Show a message from the dreamsmith server as a Blender error report"""

    bl_idname = "dreamsmith.report"
    bl_label = "dreamsmith report"
    bl_options = {"INTERNAL"}

    message: bpy.props.StringProperty()

    def execute(self, context: bpy.types.Context) -> set[str]:
        self.report({"ERROR"}, self.message)
        return {"FINISHED"}


CLASSES = (DREAMSMITH_OT_generate, DREAMSMITH_OT_cancel, DREAMSMITH_OT_texture_selected, DREAMSMITH_OT_edit_selected,
           DREAMSMITH_OT_report)
