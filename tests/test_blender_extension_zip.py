"""The extension zip: Blender's layout, the declared permissions, reproducible bytes, no heavy imports."""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from build_blender_extension import SOURCE, build  # noqa: E402

tomllib = pytest.importorskip("tomllib", reason="reading TOML needs Python 3.11+")


def test_zip_has_the_manifest_at_its_root_and_every_module(tmp_path):
    target = build(tmp_path / "a")
    assert target.name == "dreamsmith-0.1.0.zip"
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    modules = sorted(path.name for path in SOURCE.glob("*.py"))
    assert sorted(name for name in names if name.endswith(".py")) == modules and "__init__.py" in names
    assert not any("__pycache__" in name for name in names)
    assert manifest["id"] == "dreamsmith" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0" and "network" in manifest["permissions"]
    assert len(manifest["tagline"]) <= 64 and not manifest["tagline"].endswith(".")


def test_zip_bytes_are_reproducible(tmp_path):
    assert build(tmp_path / "a").read_bytes() == build(tmp_path / "b").read_bytes()


def test_extension_imports_only_blender_and_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"bpy", "mathutils"}
    for path in SOURCE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.name} imports {roots}: Blender's Python has no pip at run time"
