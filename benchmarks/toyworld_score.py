"""Score the embedded prior end to end: generate an asset per caption and compare it with the truth.

Prints one JSON object: per caption the silhouette IoU, colour error and wall time of the whole main
job (prompt to GLB); means over the training captions and over the held-out ones.

    python benchmarks/toyworld_score.py                       # all 48 captions, toy preset
    python benchmarks/toyworld_score.py --captions "a red cube" "a purple torus" --seeds 0 1 2
    python benchmarks/toyworld_score.py --jobs 2 --out runs/score   # one process per core; rerun to resume

With ``--out``, each finished run keeps its ``score.json`` and a rerun skips it, so an interrupted
benchmark resumes. With ``--jobs N`` the runs go to N worker processes of one thread each.
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

from dreamsmith.engine.overrides import make_config
from dreamsmith.engine.run import generate
from dreamsmith.errors import DreamsmithError
from dreamsmith.toyworld import world as toyworld
from dreamsmith.toyworld.score import Score, load_mesh, score_mesh


def score_run(text: str, seed: int, root: Path, preset: str, steps: int | None, overrides: list[str]) -> dict:
    """Generate one asset and score it (or reuse the score a finished earlier run left in ``root``)."""
    out = root / f"{text.replace(' ', '-')}-seed{seed}"
    done = out / "score.json"
    if done.exists():
        return json.loads(done.read_text())
    config = make_config(text, preset=preset, steps=steps, seed=seed, overrides=overrides)
    started = time.perf_counter()
    try:
        generate(config, out)
        score, error = score_mesh(load_mesh(out / "asset.glb"), text), None
    except DreamsmithError as failure:  # e.g. an empty field: scored as no asset at all
        score, error = Score(0.0, 1.0, []), str(failure)
    wall = time.perf_counter() - started
    result = {"caption": text, "seed": seed, "iou": round(score.iou, 4),
              "colour_error": round(score.colour_error, 4), "wall_time_s": round(wall, 1),
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
