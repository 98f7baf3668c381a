"""Score the embedded prior end to end: generate an asset per caption and compare it with the truth.

Prints one JSON object: per caption the silhouette IoU, colour error and wall time of the whole main
job (prompt to GLB); means over the training captions and over the held-out ones.

    python benchmarks/toyworld_score.py                       # all 48 captions, toy preset
    python benchmarks/toyworld_score.py --captions "a red cube" "a purple torus" --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from dreamsmith.engine.generate import generate
from dreamsmith.engine.setup import make_config
from dreamsmith.engine.toyworld_score import Score, load_mesh, score_mesh
from dreamsmith.errors import DreamsmithError
from dreamsmith.representations import toyworld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", nargs="*", default=list(toyworld.ALL_CAPTIONS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="toyworld-score-"))
    results = []
    for text in args.captions:
        for seed in args.seeds:
            config = make_config(text, preset=args.preset, steps=args.steps, seed=seed, overrides=args.overrides)
            out = root / f"{text.replace(' ', '-')}-seed{seed}"
            started = time.perf_counter()
            try:
                generate(config, out)
                score, error = score_mesh(load_mesh(out / "asset.glb"), text), None
            except DreamsmithError as failure:  # e.g. an empty field: scored as no asset at all
                score, error = Score(0.0, 1.0, []), str(failure)
            wall = time.perf_counter() - started
            results.append({"caption": text, "seed": seed, "iou": round(score.iou, 4),
                            "colour_error": round(score.colour_error, 4), "wall_time_s": round(wall, 1),
                            "held_out": text in toyworld.HELD_OUT_CAPTIONS, "error": error})
            print(json.dumps(results[-1]), flush=True)

    def summary(rows: list[dict]) -> dict:
        if not rows:
            return {}
        return {"n": len(rows), "mean_iou": round(statistics.mean(r["iou"] for r in rows), 4),
                "min_iou": round(min(r["iou"] for r in rows), 4),
                "mean_colour_error": round(statistics.mean(r["colour_error"] for r in rows), 4),
                "mean_wall_time_s": round(statistics.mean(r["wall_time_s"] for r in rows), 1)}

    print(json.dumps({
        "benchmark": "toyworld_score",
        "preset": args.preset,
        "overrides": args.overrides,
        "runs": str(root),
        "train": summary([r for r in results if not r["held_out"]]),
        "held_out": summary([r for r in results if r["held_out"]]),
        "results": results,
    }))


if __name__ == "__main__":
    main()
