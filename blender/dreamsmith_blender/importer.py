"""Imports a finished job's GLBs into a collection named after its prompt (main thread only)."""

from __future__ import annotations

from pathlib import Path

import bpy


def import_asset(folder: Path, prompt: str, job_id: str, server: str, lods: int) -> bpy.types.Object:
    """Import ``asset.glb`` (and ``asset_lod<k>.glb`` as hidden children) into a new collection; returns
    the asset's object. glTF's +Y up becomes Blender's +Z up, metres stay metres (the importer's job)."""
    scene = bpy.context.scene
    collection = bpy.data.collections.new(prompt[:60] or "dreamsmith")
    scene.collection.children.link(collection)
    view_layer = bpy.context.view_layer
    previous = view_layer.active_layer_collection
    view_layer.active_layer_collection = _layer_collection(view_layer.layer_collection, collection)
    try:
        asset = _import_one(folder / "asset.glb", collection.name)
        for level in range(1, lods + 1):
            child = _import_one(folder / f"asset_lod{level}.glb", f"{collection.name}_LOD{level}")
            child.parent = asset
            child.hide_viewport = child.hide_render = True
    except RuntimeError:  # leave no half-imported collection behind
        for obj in list(collection.objects):
            bpy.data.objects.remove(obj)
        bpy.data.collections.remove(collection)
        raise
    finally:
        view_layer.active_layer_collection = previous
    asset["dreamsmith_job"], asset["dreamsmith_prompt"], asset["dreamsmith_server"] = job_id, prompt, server
    return asset


def _import_one(path: Path, name: str) -> bpy.types.Object:
    before = set(bpy.data.objects)
    bpy.ops.import_scene.gltf(filepath=str(path))
    meshes = [obj for obj in bpy.data.objects if obj not in before and obj.type == "MESH"]
    if len(meshes) != 1:
        raise RuntimeError(f"{path.name} held {len(meshes)} mesh objects, expected 1")
    meshes[0].name = name
    return meshes[0]


def _layer_collection(layer: bpy.types.LayerCollection, collection: bpy.types.Collection) -> bpy.types.LayerCollection:
    if layer.collection == collection:
        return layer
    for child in layer.children:
        found = _layer_collection(child, collection)
        if found is not None:
            return found
    return None
