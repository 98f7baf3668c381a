"""Copy Google's <model-viewer> (its self-contained UMD bundle and licence) into the package, where the
batch gallery page (``dreamsmith gallery``) loads it from the file system: no CDN at view time.

The version is pinned by tools/model-viewer/package-lock.json; run after installing it:

    npm ci --prefix tools/model-viewer && python tools/vendor_model_viewer.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tools" / "model-viewer" / "node_modules" / "@google" / "model-viewer"
TARGET = ROOT / "dreamsmith" / "exporters" / "web"
# The UMD build bundles three.js and lit and registers <model-viewer> as a classic script: module
# scripts (and their imports) are refused on file:// pages, classic ones are not.
BUNDLE = "dist/model-viewer-umd.min.js"


def main() -> int:
    if not (SOURCE / BUNDLE).is_file():
        print(f"{SOURCE / BUNDLE} is missing: run `npm ci --prefix tools/model-viewer` first", file=sys.stderr)
        return 1
    version = json.loads((SOURCE / "package.json").read_text())["version"]
    TARGET.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE / BUNDLE, TARGET / "model-viewer.min.js")
    shutil.copyfile(SOURCE / "LICENSE", TARGET / "model-viewer.LICENSE")
    (TARGET / "model-viewer.json").write_text(json.dumps({"package": "@google/model-viewer", "version": version,
                                                          "file": BUNDLE}, indent=2) + "\n")
    print(f"copied @google/model-viewer {version} into {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
