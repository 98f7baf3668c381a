"""Image prompts on the embedded prior, scored against the toy world's truth. Resumable; prints (and keeps) one
JSON object.

1. Image-to-3D: one 128 px render (elevation 20 deg, azimuth 30 deg) of each held-out caption's object and of a
   pink cube (a colour no caption names) -> `generate --image REF` with no prompt; beside it the text-prompted run
   of the same caption (none for the pink cube). Per run: silhouette and volume IoU against the shape, colour
   error against the object's colour, wall time.
2. Style: 4 prompts that name no colour of their own ("a gray sphere", ...: the embedded prior refuses shape-only
   prompts, which are not among its captions, and its 2D samples of "a sphere" draw any shape) with and without
   `--style-reference` an orange render (of a capsule, a shape none of the prompts names): colour error against
   orange across the batch.

Everything lands in --out (reference images, runs, results.json); a second call skips what is done. Each toy
generation takes two to four minutes on one CPU thread.

    OMP_NUM_THREADS=1 python benchmarks/image_prompt_score.py --out runs/image-prompt-bench
    python benchmarks/image_prompt_score.py --out runs/ipb --captions "a purple torus" --no-style
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from personalize_score import asset, render_subject, shape_and_colour  # noqa: E402

from dreamsmith.engine.image_prompts import image_prompt_spec, style_spec  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402

PINK = (1.0, 0.41, 0.71)
STYLE_PROMPTS = ("a gray sphere", "a gray cube", "a gray cylinder", "a gray torus")
REFERENCE_AZIMUTH_DEG = 30.0


def reference(root: Path, name: str, shape: str, colour: tuple[float, float, float], resolution: int) -> Path:
    """The one reference render of a shape in a colour, as a PNG."""
    folder = render_subject(root / "references" / name, shape, colour, resolution, views=1,
                            start_azimuth_deg=REFERENCE_AZIMUTH_DEG)
    return next(folder.glob("*.png"))


def timed_asset(root: Path, name: str, prompt: str, conditioners: list[dict[str, Any]], steps: int | None,
                seed: int) -> tuple[Path, float | None]:
    """The run's asset and its wall time (None when an earlier call made it)."""
    if (root / "runs" / name / "asset.glb").exists():
        return root / "runs" / name / "asset.glb", None
    started = time.perf_counter()
    glb = asset(root, name, prompt, [], steps, seed, conditioners)
    return glb, round(time.perf_counter() - started, 1)


def image_to_3d(root: Path, subjects: list[tuple[str, str, tuple[float, float, float]]], args: argparse.Namespace,
                results: dict[str, Any], save) -> None:
    """Rows of ``results["image_to_3d"]``: per subject (name, truth caption for the shape, colour) the image run and,
    when the caption names the colour, the text run."""
    rows = results.setdefault("image_to_3d", {})
    for name, truth, colour in subjects:
        row = rows.setdefault(name, {})
        image = reference(root, name.replace(" ", "-"), tw.parse_caption(truth)[1], colour, args.resolution)
        runs = {"image": ("", [image_prompt_spec(image, args.image_scale, None, None)])}
        if name in tw.ALL_CAPTIONS:
            runs["text"] = (name, [])
        for kind, (prompt, conditioners) in runs.items():
            if kind in row:
                continue
            glb, wall = timed_asset(root, f"{kind}-{name.replace(' ', '-')}", prompt, conditioners, args.steps,
                                    args.seed)
            row[kind] = {**shape_and_colour(glb, truth, colour), "wall_time_s": wall}
            save()


def style(root: Path, args: argparse.Namespace, results: dict[str, Any], save) -> None:
    """``results["style"]``: each colourless prompt's colour error to orange with and without the reference."""
    orange = tw.COLOURS["orange"]
    image = reference(root, "orange-capsule", "capsule", orange, args.resolution)
    rows = results.setdefault("style", {})
    for prompt in STYLE_PROMPTS:
        shape = prompt.split()[-1]
        row = rows.setdefault(prompt, {})
        for kind, conditioners in (("plain", []), ("styled", [style_spec(image)])):
            if kind in row:
                continue
            glb, wall = timed_asset(root, f"style-{kind}-{shape}", prompt, conditioners, args.steps, args.seed)
            row[kind] = {**shape_and_colour(glb, f"an orange {shape}", orange), "wall_time_s": wall}
            save()
    done = [row for row in rows.values() if {"plain", "styled"} <= row.keys()]
    if done:
        results["style_summary"] = {
            kind: round(statistics.mean(row[kind]["colour_error"] for row in done), 4) for kind in ("plain", "styled")}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/image-prompt-bench"))
    parser.add_argument("--captions", nargs="*", default=list(tw.HELD_OUT_CAPTIONS),
                        help="World captions whose render prompts an image-to-3D run (default: the held-out ones).")
    parser.add_argument("--no-pink", action="store_true", help="Skip the pink cube.")
    parser.add_argument("--no-style", action="store_true", help="Skip the style batch.")
    parser.add_argument("--image-scale", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=128, help="The reference renders' size (px).")
    parser.add_argument("--steps", type=int, default=None, help="Generation steps (default: the toy preset's).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = args.out
    results_file = root / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    results.setdefault("settings", {"image_scale": args.image_scale, "resolution": args.resolution,
                                    "steps": args.steps, "seed": args.seed})

    def save() -> None:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=2) + "\n")

    subjects = [(text, text, tuple(tw.COLOURS[tw.parse_caption(text)[0]])) for text in args.captions]
    if not args.no_pink:
        subjects.append(("a pink cube", "a red cube", PINK))
    image_to_3d(root, subjects, args, results, save)
    if not args.no_style:
        style(root, args, results, save)
    save()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
