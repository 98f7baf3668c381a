"""Dress the toy capsule in a striped garment (``dreamsmith tryon --region upper``) and score the texture.

The capsule is the toy world's own (marching cubes of its SDF, orange vertex colours, no UVs); the garment
an opaque RGBA image of horizontal stripes. Scored on the exported asset: at every face's centroid the
texture's colour against what it should be, the garment laid over the upper half's extent for faces above
the capsule's mid-height (``garment_error``) and the capsule's own orange below (``body_error``), mean
absolute difference over RGB; faces straddling the mid-height plane are left out (they hold both). Prints
one JSON object.

    python benchmarks/tryon_score.py                 # 50 fill steps, 64^3 marching cubes
    python benchmarks/tryon_score.py --keep DIR      # keep the run directory (previews/turntable) in DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from dreamsmith.exporters.bake import sample_texture
from dreamsmith.toyworld.score import ground_truth_mesh

STRIPES = np.array([[0.85, 0.1, 0.1], [0.1, 0.2, 0.8], [0.95, 0.95, 0.95], [0.1, 0.6, 0.2]], dtype=np.float32)


def striped_garment(path: Path, size: int = 64, stripes: int = 8) -> np.ndarray:
    """Write an opaque RGBA image of ``stripes`` horizontal bands (colours ``STRIPES`` in turn); return it."""
    rows = (np.arange(size) * stripes // size) % len(STRIPES)
    rgb = np.broadcast_to(STRIPES[rows][:, None, :], (size, size, 3))
    rgba = np.concatenate([rgb, np.ones((size, size, 1), np.float32)], axis=-1)
    Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), "RGBA").save(path)
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def capsule(path: Path, resolution: int) -> trimesh.Trimesh:
    """Write the toy capsule (orange, vertex colours, no UVs) as a GLB; return it."""
    mesh = ground_truth_mesh("an orange capsule", resolution)
    colours = (np.concatenate([mesh.vertex_colors, np.ones((mesh.n_vertices, 1))], axis=1) * 255).astype(np.uint8)
    out = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colours, process=False)
    out.export(path)
    return out


def score(asset: Path, source: trimesh.Trimesh, garment: np.ndarray) -> dict[str, float]:
    """Garment and body colour errors of the dressed ``asset`` (see the module doc)."""
    loaded = trimesh.load(asset, force="mesh", process=False)
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"), dtype=np.float32) / 255.0
    corners = np.asarray(loaded.vertices)[loaded.faces]
    centroids = corners.mean(1)
    colour = sample_texture(texture, np.asarray(loaded.visual.uv)[loaded.faces].mean(1))
    low, high = source.vertices.min(0), source.vertices.max(0)
    middle = (low[1] + high[1]) / 2
    above = (corners[..., 1] > middle).all(1)
    below = (corners[..., 1] < middle).all(1)
    upper = source.vertices[source.vertices[:, 1] > middle]
    x0, y0, x1, y1 = upper[:, 0].min(), upper[:, 1].min(), upper[:, 0].max(), upper[:, 1].max()
    u = (centroids[:, 0] - x0) / (x1 - x0)
    v = 1 - (y1 - centroids[:, 1]) / (y1 - y0)  # sample_texture's v: 1 at the image's top row
    expected = sample_texture(garment[..., :3], np.stack([u, v], -1))
    body = np.asarray(source.visual.vertex_colors, dtype=np.float32)[0, :3] / 255.0
    return {"garment_error": round(float(np.abs(colour[above] - expected[above]).mean()), 4),
            "body_error": round(float(np.abs(colour[below] - body).mean()), 4),
            "faces_above": int(above.sum()), "faces_below": int(below.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="Fill-pass steps.")
    parser.add_argument("--resolution", type=int, default=64, help="Marching-cubes grid of the capsule.")
    parser.add_argument("--keep", type=Path, default=None, help="Write the run directory here and keep it.")
    args = parser.parse_args()
    from typer.testing import CliRunner

    from dreamsmith.cli import app

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = capsule(folder / "capsule.glb", args.resolution)
        garment = striped_garment(folder / "stripes.png")
        before = (folder / "capsule.glb").read_bytes()
        out = args.keep or folder / "run"
        started = time.perf_counter()
        result = CliRunner().invoke(app, ["tryon", str(folder / "capsule.glb"), str(folder / "stripes.png"),
                                          "--region", "upper", "--steps", str(args.steps), "--out", str(out),
                                          "--overwrite", "--quiet"])
        wall = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"dreamsmith tryon failed: {result.output}")
        scores = score(out / "asset.glb", source, garment)
        tryon = json.loads((out / "tryon.json").read_text())
        untouched = (folder / "capsule.glb").read_bytes() == before
    print(json.dumps({**scores, "source_untouched": untouched, "wall_s": round(wall, 1), "tryon": tryon}, indent=2))


if __name__ == "__main__":
    main()
