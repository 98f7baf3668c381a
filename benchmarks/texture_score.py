"""Texture the toy world's true meshes, grey, from their captions, and score the colour.

Prints one JSON object: per caption the colour error of the textured asset (``toyworld.score``'s, mean
absolute difference of the mean foreground colour), its silhouette IoU (1 when the geometry did not
move) and the wall time of ``dreamsmith texture``'s run; and the mean colour error.

    python benchmarks/texture_score.py                                  # the six shapes, toy-texture
    python benchmarks/texture_score.py --captions "a red cube" --steps 100 --set guidance.guidance_scale=20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

from dreamsmith.engine import generate, make_config
from dreamsmith.engine.run import Progress
from dreamsmith.toyworld.score import ground_truth_mesh, load_mesh, score_mesh

CAPTIONS = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "a purple torus", "an orange capsule"]


def texture_caption(caption: str, folder: Path, steps: int | None, seed: int, overrides: list[str]) -> dict:
    truth = ground_truth_mesh(caption)
    grey = folder / "grey.glb"
    trimesh.Trimesh(truth.vertices, truth.faces, process=False).export(grey)
    config = make_config(caption, preset="toy-texture", steps=steps, seed=seed,
                         overrides=[f"uv_texture.mesh={grey}", "preview_every=0", *overrides])
    started = time.perf_counter()
    generate(config, folder / "run", progress=Progress())
    wall = time.perf_counter() - started
    asset = load_mesh(folder / "run" / "asset.glb")
    score = score_mesh(asset, caption)
    moved = float(np.abs(np.sort(np.unique(asset.vertices, axis=0), axis=0)
                         - np.sort(np.unique(truth.vertices, axis=0), axis=0)).max())
    return {"colour_error": round(score.colour_error, 4), "iou": round(score.iou, 4),
            "max_vertex_move": moved, "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", nargs="+", default=CAPTIONS)
    parser.add_argument("--steps", type=int, default=None, help="Steps per caption (default: the preset's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override.")
    args = parser.parse_args()
    results = {}
    for caption in args.captions:
        with tempfile.TemporaryDirectory() as folder:
            results[caption] = texture_caption(caption, Path(folder), args.steps, args.seed, args.overrides)
    mean = statistics.mean(r["colour_error"] for r in results.values())
    print(json.dumps({"captions": results, "mean_colour_error": round(mean, 4)}, indent=2))


if __name__ == "__main__":
    main()
