"""The sidebar panel in the 3D view (N panel, tab "dreamsmith")."""

from __future__ import annotations

import bpy


class DREAMSMITH_PT_panel(bpy.types.Panel):
    bl_label = "dreamsmith"
    bl_idname = "DREAMSMITH_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "dreamsmith"

    def draw(self, context: bpy.types.Context) -> None:
        settings, job = context.scene.dreamsmith, context.window_manager.dreamsmith_job
        layout = self.layout
        layout.prop(settings, "prompt", text="")
        column = layout.column(align=True)
        for name in ("preset", "model", "steps", "seed", "texture_size", "max_triangles", "lods"):
            column.prop(settings, name)
        running = job.state in ("queued", "running", "cancelling")
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.enabled = not running
        row.operator("dreamsmith.generate", icon="SHADERFX")
        if job.job_id:
            eta = f" · {job.eta_s:.0f} s left" if job.eta_s >= 0 and running else ""
            layout.progress(factor=job.progress, type="BAR", text=f"{job.progress:.0%}{eta}")
            layout.label(text=job.text, icon="ERROR" if job.error else "INFO")
            if job.preview_icon:
                layout.template_icon(icon_value=job.preview_icon, scale=8.0)
            layout.operator("dreamsmith.cancel", icon="CANCEL")
        box = layout.box()
        box.operator("dreamsmith.texture_selected", icon="TEXTURE")
        box.prop(settings, "edit_instruction")
        box.operator("dreamsmith.edit_selected", icon="MODIFIER")
        server = layout.column(align=True)
        server.prop(settings, "server")
        server.prop(settings, "token")


CLASSES = (DREAMSMITH_PT_panel,)
