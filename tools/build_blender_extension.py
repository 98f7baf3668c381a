"""Write the installable Blender extension zip: python tools/build_blender_extension.py [--out DIR].

The zip holds blender/dreamsmith_blender/ with blender_manifest.toml at its root, as Blender's
`extension build` lays it out; entries are sorted and dated 1980-01-01, so the same sources give
the same bytes. Prints the zip's path and size as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "blender" / "dreamsmith_blender"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def manifest_field(manifest: str, key: str) -> str:
    match = re.search(rf'^{key}\s*=\s*"([^"]+)"', manifest, re.MULTILINE)
    if match is None:
        raise SystemExit(f"blender_manifest.toml has no {key}")
    return match.group(1)


def build(out_dir: Path, source: Path = SOURCE) -> Path:
    """Zip ``source`` into ``out_dir/<id>-<version>.zip``; returns the zip's path."""
    manifest = (source / "blender_manifest.toml").read_text(encoding="utf-8")
    target = out_dir / f"{manifest_field(manifest, 'id')}-{manifest_field(manifest, 'version')}.zip"
    files = sorted(path for path in source.rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".toml"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            entry = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=FIXED_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, path.read_bytes())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("dist"), help="folder for the zip (default dist/)")
    target = build(parser.parse_args().out)
    print(json.dumps({"zip": str(target), "bytes": target.stat().st_size}))


if __name__ == "__main__":
    main()
