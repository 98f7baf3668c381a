"""SDS, VSD, DreamFlow and MVDream side by side on the embedded priors, scored against the toy world's truth.

Each method runs at its own preset (``toy``, ``toy-vsd``, ``toy-dreamflow``; ``toy-mv`` on the
multi-view ``toyworld-mv``) on the same captions (6 training, 2 held out) and seeds. Per run: silhouette
IoU (side views), its spread over the 8 side views (the standard deviation of the per-view IoUs: an object
right from some sides and wrong from others spreads), IoU seen from above (elevation 70°: a filled torus
hole shows there), volume IoU, colour error, wall time, and the IoU-against-step
curve, read from the run's preview grids (the normal row: the object's silhouette over white) against
the truth rendered from the same preview cameras. Prints one JSON object and writes, under ``--out``,
``compare.json``, ``compare.md`` (the table) and ``compare.png`` (the final renders, one row per method).

    OMP_NUM_THREADS=1 python benchmarks/guidance_compare.py --jobs 2 --out runs/compare
    python benchmarks/guidance_compare.py --methods sds vsd --seeds 0 --captions "a red cube"

Reruns resume: finished runs keep their ``score.json`` (see ``toyworld_score.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from toyworld_score import one_thread, score_run  # noqa: E402

from dreamsmith.engine import make_config  # noqa: E402
from dreamsmith.engine.camera_sampling import eval_cameras  # noqa: E402
from dreamsmith.toyworld.score import ground_truth_mesh, render_mesh  # noqa: E402

METHODS = {"sds": "toy", "vsd": "toy-vsd", "dreamflow": "toy-dreamflow", "mvdream": "toy-mv"}
CAPTIONS = ["a red cube", "a green sphere", "a blue torus", "a yellow cone", "a gray cylinder", "a red capsule",
            "a purple torus", "a green cube"]
PREVIEW_EVERY = 50


def preview_iou(preview: Path, truth: np.ndarray) -> float:
    """Silhouette IoU of a preview grid's normal row (non-white = object) against ``truth [V, H, W]``."""
    image = np.asarray(Image.open(preview).convert("RGB"), dtype=np.float32) / 255.0
    views, size = truth.shape[0], truth.shape[1]
    normals = image[size:2 * size]
    masks = np.stack([normals[:, i * size:(i + 1) * size].min(-1) < 0.97 for i in range(views)])
    return float((masks & truth).sum() / max(1, (masks | truth).sum()))


def curve(run: Path, text: str, preset: str) -> list[tuple[int, float]]:
    """(step, preview silhouette IoU) for every preview the run wrote."""
    camera = make_config(text, preset=preset).stages[0].camera
    _, truth = render_mesh(ground_truth_mesh(text), eval_cameras(camera))
    truth = truth.numpy()
    points = []
    for preview in sorted((run / "previews").glob("*_[0-9]*.png")):
        step = int(preview.stem.rsplit("_", 1)[1])
        points.append((step, round(preview_iou(preview, truth), 4)))
    return points


def one(method: str, text: str, seed: int, root: Path) -> dict:
    preset = METHODS[method]
    folder = root / method
    result = score_run(text, seed, folder, preset, None, [f"preview_every={PREVIEW_EVERY}"])
    run = folder / f"{text.replace(' ', '-')}-seed{seed}"
    return {**result, "method": method, "preset": preset, "curve": curve(run, text, preset)}


def steps_to_reach(points: list[tuple[int, float]], level: float) -> int | None:
    """The first preview step at which the curve reaches ``level`` (None: never)."""
    return next((step for step, iou in points if iou >= level), None)


def summarise(rows: list[dict], methods: list[str]) -> dict:
    table = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        table[method] = {key: round(statistics.mean(r[key] for r in mine), 4)
                         for key in ("iou", "top_iou", "volume_iou", "colour_error", "wall_time_s")}
        held_out = [r["iou"] for r in mine if r["held_out"]]
        table[method]["held_out_iou"] = round(statistics.mean(held_out), 4) if held_out else None
        spreads = [statistics.pstdev(r["per_view_iou"]) for r in mine if r.get("per_view_iou")]
        table[method]["iou_spread"] = round(statistics.mean(spreads), 4) if spreads else None
    if "sds" in methods:
        sds = {(r["caption"], r["seed"]): r for r in rows if r["method"] == "sds"}
        for method in methods:
            fractions = []
            for r in (r for r in rows if r["method"] == method):
                reference = sds.get((r["caption"], r["seed"]))
                if reference and reference["curve"]:
                    final, total = reference["curve"][-1][1], reference["curve"][-1][0]
                    reached = steps_to_reach(r["curve"], final)
                    fractions.append(1.0 if reached is None else reached / total)
            table[method]["steps_to_sds_final_iou"] = round(statistics.mean(fractions), 3) if fractions else None
    return table


def markdown(table: dict) -> str:
    lines = ["| method (preset) | silhouette IoU | per-view IoU spread | IoU from above | volume IoU | held-out IoU | "
             "colour error | steps to SDS's final IoU (fraction of SDS's) | wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, row in table.items():
        lines.append(f"| {method} ({METHODS[method]}) | {row['iou']:.3f} | {row['iou_spread']} | "
                     f"{row['top_iou']:.3f} | {row['volume_iou']:.3f} | {row['held_out_iou']} | "
                     f"{row['colour_error']:.3f} | {row.get('steps_to_sds_final_iou')} | {row['wall_time_s']:.0f} |")
    return "\n".join(lines) + "\n"


def grid(rows: list[dict], methods: list[str], root: Path) -> Image.Image:
    """One row per method: each run's poster, downsized, in caption order (first seed)."""
    tiles = []
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: (r["seed"], CAPTIONS.index(r["caption"])
                                                                                if r["caption"] in CAPTIONS else 99))
        seed = mine[0]["seed"]
        images = [Image.open(root / method / f"{r['caption'].replace(' ', '-')}-seed{seed}" / "asset_poster.png")
                  .convert("RGB").resize((128, 128)) for r in mine if r["seed"] == seed]
        tiles.append(images)
    width = max(len(t) for t in tiles)
    canvas = Image.new("RGB", (128 * width, 128 * len(tiles)), "white")
    for y, images in enumerate(tiles):
        for x, image in enumerate(images):
            canvas.paste(image, (128 * x, 128 * y))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--captions", nargs="*", default=CAPTIONS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    args = parser.parse_args()
    jobs = [(m, c, s) for s in args.seeds for c in args.captions for m in args.methods]
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=one_thread) as pool:
        rows = list(pool.map(one, *zip(*jobs, strict=True), [args.out] * len(jobs)))
    table = summarise(rows, args.methods)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps({"summary": table, "runs": rows}, indent=1))
    (args.out / "compare.md").write_text(markdown(table))
    grid(rows, args.methods, args.out).save(args.out / "compare.png")
    print(json.dumps({"summary": table}))


if __name__ == "__main__":
    main()
