"""Score the embedded prior end to end: generate an asset per caption and compare it with the truth.

Prints one JSON object: per caption the silhouette IoU (side views), the silhouette IoU from above,
the volume IoU, the bounding box against the truth's, the colour error and the wall time of the whole
main job (prompt to GLB); means over the training captions, the held-out ones and each shape class.

    python benchmarks/toyworld_score.py                       # all 48 captions, toy preset
    python benchmarks/toyworld_score.py --captions "a red cube" "a purple torus" --seeds 0 1 2
    python benchmarks/toyworld_score.py --jobs 2 --out runs/score   # one process per core; rerun to resume

With ``--out``, each finished run keeps its ``score.json`` and a rerun skips it, so an interrupted
benchmark resumes; a run scored by an older version of the score is scored again from its asset.
With ``--jobs N`` the runs go to N worker processes of one thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from dreamsmith.engine import generate, make_config
from dreamsmith.errors import DreamsmithError
from dreamsmith.toyworld import world as toyworld
from dreamsmith.toyworld.score import Score, load_mesh, score_mesh

METRICS = ("iou", "top_iou", "volume_iou", "extent_error", "colour_error")
"""The per-run numbers the summaries average."""


def score_fields(score: Score) -> dict:
    """A score as rounded JSON fields."""
    return {"iou": round(score.iou, 4), "top_iou": round(score.top_iou, 4), "volume_iou": round(score.volume_iou, 4),
            "extent": [round(e, 3) for e in score.extent], "extent_error": round(score.extent_error, 4),
            "colour_error": round(score.colour_error, 4),
            "per_view_iou": [round(iou, 4) for iou in score.per_view_iou]}


def score_run(text: str, seed: int, root: Path, preset: str, steps: int | None, overrides: list[str]) -> dict:
    """Generate one asset and score it (or reuse the score a finished earlier run left in ``root``)."""
    out = root / f"{text.replace(' ', '-')}-seed{seed}"
    done = out / "score.json"
    if done.exists():
        result = json.loads(done.read_text())
        if "volume_iou" in result or result["error"]:
            return result
        result.update(score_fields(score_mesh(load_mesh(out / "asset.glb"), text)))  # scored before the 3D score
    else:
        config = make_config(text, preset=preset, steps=steps, seed=seed, overrides=overrides)
        started = time.perf_counter()
        try:
            generate(config, out)
            score, error = score_mesh(load_mesh(out / "asset.glb"), text), None
        except DreamsmithError as failure:  # e.g. an empty field: scored as no asset at all
            score, error = Score.empty(), str(failure)
        wall = time.perf_counter() - started
        result = {"caption": text, "seed": seed, **score_fields(score), "wall_time_s": round(wall, 1),
                  "held_out": text in toyworld.HELD_OUT_CAPTIONS, "error": error}
    partial = done.with_suffix(".tmp")
    out.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(result))
    os.replace(partial, done)
    return result


def one_thread() -> None:
    torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", nargs="*", default=list(toyworld.ALL_CAPTIONS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--preset", default="toy")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="toyworld-score-"))
    unknown = [text for text in args.captions if text not in toyworld.ALL_CAPTIONS]
    if unknown:
        raise SystemExit(f"error: not toyworld captions: {unknown} (KEY=VALUE overrides go before --captions)")
    try:  # a bad preset or override fails here, once, before any run
        make_config(args.captions[0], preset=args.preset, steps=args.steps, overrides=args.overrides)
    except DreamsmithError as error:
        raise SystemExit(f"error: {error}") from None
    jobs = [(text, seed, root, args.preset, args.steps, args.overrides)
            for text in args.captions for seed in args.seeds]
    results = []
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=one_thread) as pool:
            for result in pool.map(score_run, *zip(*jobs, strict=True)):
                results.append(result)
                print(json.dumps(result), flush=True)
    else:
        for job in jobs:
            results.append(score_run(*job))
            print(json.dumps(results[-1]), flush=True)

    def summary(rows: list[dict]) -> dict:
        if not rows:
            return {}
        means = {f"mean_{key}": round(statistics.mean(r[key] for r in rows), 4) for key in METRICS}
        return {"n": len(rows), **means, "min_volume_iou": round(min(r["volume_iou"] for r in rows), 4),
                "max_extent_error": round(max(r["extent_error"] for r in rows), 4),
                "mean_wall_time_s": round(statistics.mean(r["wall_time_s"] for r in rows), 1)}

    shapes = {shape: [r for r in results if toyworld.parse_caption(r["caption"])[1] == shape]
              for shape in toyworld.SHAPES}

    print(json.dumps({
        "benchmark": "toyworld_score",
        "preset": args.preset,
        "overrides": args.overrides,
        "runs": str(root),
        "train": summary([r for r in results if not r["held_out"]]),
        "held_out": summary([r for r in results if r["held_out"]]),
        "shapes": {shape: summary(rows) for shape, rows in shapes.items() if rows},
        "results": results,
    }))


if __name__ == "__main__":
    main()
