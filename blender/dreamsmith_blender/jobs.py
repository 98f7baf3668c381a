"""The panel's one running job: its watcher thread and the main-thread timer that applies its events."""

from __future__ import annotations

import contextlib
import queue
from pathlib import Path

import bpy
import bpy.utils.previews

from .client import Client
from .importer import import_asset
from .watcher import JobWatcher

TIMER_S = 0.25


class ActiveJob:
    """What the timer needs between ticks (module state: Blender data cannot hold threads)."""

    watcher: JobWatcher | None = None
    request: dict = {}
    server: str = ""
    previews = None


def start(client: Client, job: dict, request: dict) -> None:
    """Follow ``job`` (just submitted) until its asset is imported or it ends."""
    stop()
    ActiveJob.watcher = JobWatcher(client, job["id"], request.get("lods", 0))
    ActiveJob.request, ActiveJob.server = request, client.address
    state = bpy.context.window_manager.dreamsmith_job
    state.job_id, state.state, state.progress, state.eta_s, state.error = job["id"], job["state"], 0.0, -1.0, ""
    state.text, state.preview, state.preview_icon = "queued", "", 0
    ActiveJob.watcher.start()
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=TIMER_S)


def stop() -> None:
    if ActiveJob.watcher is not None:
        ActiveJob.watcher.stopped.set()
        ActiveJob.watcher = None


def tick() -> float | None:
    """Timer callback (main thread): apply the watcher's events; None ends the timer."""
    watcher = ActiveJob.watcher
    if watcher is None:
        return None
    state = bpy.context.window_manager.dreamsmith_job
    while True:
        try:
            kind, value = watcher.events.get_nowait()
        except queue.Empty:
            break
        if kind == "status":
            _show_status(state, value)
        elif kind == "preview":
            state.preview, state.preview_icon = str(value), _load_preview(value)
        elif kind == "error":
            state.error, state.text = value, value
            report_error(value)
            ActiveJob.watcher = None
            return None
        elif kind == "ready":
            try:
                asset = import_asset(value, ActiveJob.request["prompt"], watcher.job_id, ActiveJob.server,
                                     ActiveJob.request.get("lods", 0))
            except RuntimeError as error:  # the glTF importer's own failures come as RuntimeError too
                state.error = state.text = f"import failed: {str(error).strip()}"
                report_error(state.error)
            else:
                state.text = f"imported {asset.name}"
            ActiveJob.watcher = None
            _redraw()
            return None
    _redraw()
    return TIMER_S


def _show_status(state: bpy.types.PropertyGroup, job: dict) -> None:
    state.state = job["state"]
    state.progress = job["done_steps"] / job["all_steps"] if job["all_steps"] else 0.0
    state.eta_s = job["eta_s"] if job["eta_s"] is not None else -1.0
    stage = f"{job['stage']} {job['step']}/{job['total']}" if job["stage"] else ""
    state.text = " · ".join(part for part in (job["state"], stage, job.get("message") or "") if part)


def _load_preview(path: Path) -> int:
    if ActiveJob.previews is None:
        ActiveJob.previews = bpy.utils.previews.new()
    key = str(path)
    if key not in ActiveJob.previews:
        ActiveJob.previews.load(key, key, "IMAGE")
    return ActiveJob.previews[key].icon_id


def report_error(message: str) -> None:
    """A Blender report (status bar and Info editor) for an error that arrives outside an operator."""
    # The report lands in the Info log; an operator reporting an error also raises it to its Python caller.
    with contextlib.suppress(RuntimeError):
        bpy.ops.dreamsmith.report(message=message)


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def unregister() -> None:
    stop()
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    if ActiveJob.previews is not None:
        bpy.utils.previews.remove(ActiveJob.previews)
        ActiveJob.previews = None
