"""dreamsmith for Blender: a thin client of `dreamsmith serve` (no torch in Blender's Python)."""

from __future__ import annotations

import bpy

from . import jobs, operators, panel, properties


def register() -> None:
    properties.register()
    for cls in (*operators.CLASSES, *panel.CLASSES):
        bpy.utils.register_class(cls)


def unregister() -> None:
    jobs.unregister()
    for cls in reversed((*operators.CLASSES, *panel.CLASSES)):
        bpy.utils.unregister_class(cls)
    properties.unregister()
