"""Personalized 3D on the embedded prior: a subject it has never seen, what each adapter makes the model
forget, and Textual Inversion of a held-out caption. Resumable; prints (and keeps) one JSON object.

1. Pink sphere (a colour outside the world's eight): 4 renders with the project's SDF tracer -> `personalize
   --token "<sks>" --class-word sphere` with each method -> `generate "a <sks> sphere" --adapter`: silhouette
   and volume IoU against the sphere, colour error (mean absolute difference of the mean foreground albedo over
   the 8 score views) against pink.
2. Forgetting: 4 ordinary captions generated with each adapter loaded, scored against the same caption's run
   without any adapter (silhouette IoU between the two assets, colour error between their mean colours).
3. Textual Inversion of "a purple torus" (held out of training): 4 renders -> a token "<tok>" ->
   `generate "a <tok>"`, scored against the purple torus.

Everything lands in --out (subject images, adapters, runs, results.json); a second call skips what is done.
Each toy generation takes about two minutes on two CPU cores, each personalization --steps x ~0.2 s.

    python benchmarks/personalize_score.py --out runs/personalize-bench
    python benchmarks/personalize_score.py --out runs/pb --methods lora,dco --steps 200 --gen-steps 150
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamsmith.engine import generate, make_config
from dreamsmith.engine.personalize import PersonalizeConfig, personalize
from dreamsmith.engine.previews import write_png
from dreamsmith.engine.run import Progress
from dreamsmith.renderers.cameras import orbit_cameras
from dreamsmith.renderers.sdf_tracer import render_sdf
from dreamsmith.toyworld import world as tw
from dreamsmith.toyworld.score import ground_truth_mesh, load_mesh, score_cameras, score_mesh, silhouette_iou

PINK = (1.0, 0.41, 0.71)
METHODS = ("textual-inversion", "dreambooth", "lora", "dco")
FORGETTING_CAPTIONS = ("a red cube", "a blue cylinder", "a yellow cone", "a green torus")


def render_subject(folder: Path, shape: str, albedo: tuple[float, float, float], resolution: int = 32,
                   views: int = 4, start_azimuth_deg: float = 0.0) -> Path:
    """``views`` renders (evenly spaced azimuths from ``start_azimuth_deg``, elevation 20 deg) of a toyworld shape
    in any colour, as PNGs."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) == views:
        return folder
    cameras = orbit_cameras(views, tw.SCORE_ELEVATION_DEG, tw.CAMERA_DISTANCE, tw.FOVY_DEG, resolution,
                            start_azimuth_deg)
    out = render_sdf(tw.SHAPES[shape], cameras, torch.tensor(albedo), tw.AMBIENT, tw.DIFFUSE, tw.BACKGROUND,
                     bound_radius=tw.BOUNDING_RADIUS)
    for index, image in enumerate(out.rgb):
        write_png(folder / f"view{index}.png", (image.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))
    return folder


def adapter(root: Path, name: str, images: Path, config: PersonalizeConfig) -> tuple[Path, float]:
    """The adapter folder (trained unless there) and the seconds it took (0 when reused)."""
    out = root / "adapters" / name
    if out.is_dir():
        return out, 0.0
    started = time.perf_counter()
    resume = (out.parent / f".{name}.partial" / "checkpoint.pt").exists()
    personalize([images], config, out, resume=resume, overwrite=not resume)
    return out, time.perf_counter() - started


def asset(root: Path, name: str, prompt: str, adapters: list[Path], steps: int | None, seed: int,
          conditioners: list[dict[str, Any]] = ()) -> Path:
    """The run's asset.glb (generated, resumed or reused); ``conditioners``: more ``guidance.conditioners``
    entries (an image prompt, a style reference)."""
    run = root / "runs" / name
    if (run / "asset.glb").exists():
        return run / "asset.glb"
    specs = [*({"name": "adapter", "path": str(path.resolve())} for path in adapters), *conditioners]
    overrides = ["guidance.conditioners=" + json.dumps(specs)] if specs else []
    config = make_config(prompt, steps=steps, seed=seed, overrides=overrides)
    resume = (run / "checkpoints" / "last.pt").exists()
    generate(config, run, resume=resume, overwrite=not resume, progress=Progress())
    return run / "asset.glb"


def shape_and_colour(glb: Path, truth_caption: str, colour: tuple[float, float, float]) -> dict[str, float]:
    """Silhouette/volume IoU against the caption's shape, colour error against ``colour``."""
    mesh = load_mesh(glb)
    score = score_mesh(mesh, truth_caption)
    _, mean_colour, _ = silhouette_iou(mesh, ground_truth_mesh(truth_caption), score_cameras())
    return {"iou": round(score.iou, 4), "volume_iou": round(score.volume_iou, 4),
            "colour_error": round(float((mean_colour - torch.tensor(colour)).abs().mean()), 4),
            "mean_colour": [round(float(c), 3) for c in mean_colour]}


def against(glb: Path, baseline: Path) -> dict[str, float]:
    """Silhouette IoU and colour error of one asset against another (the run without an adapter)."""
    per_view, colour, base_colour = silhouette_iou(load_mesh(glb), load_mesh(baseline), score_cameras())
    return {"iou_vs_base": round(float(np.mean(per_view)), 4),
            "colour_error_vs_base": round(float((colour - base_colour).abs().mean()), 4)}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/personalize-bench"))
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated methods.")
    parser.add_argument("--steps", type=int, default=400, help="Personalization steps.")
    parser.add_argument("--gen-steps", type=int, default=None, help="Generation steps (default: the toy preset's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-prompt", default="", help="dreambooth's class prompt (default: \"a sphere\").")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    root = args.out
    results_file = root / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.exists() else {}
    results.setdefault("settings", {"steps": args.steps, "gen_steps": args.gen_steps, "seed": args.seed,
                                    "class_prompt": args.class_prompt})

    def save() -> None:
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=2) + "\n")

    pink = render_subject(root / "subjects" / "pink-sphere", "sphere", PINK)
    baselines = {caption: asset(root, f"base-{caption}", caption, [], args.gen_steps, args.seed)
                 for caption in FORGETTING_CAPTIONS}
    for method in methods:
        if method in results.get("pink_sphere", {}):
            continue
        config = PersonalizeConfig(method=method, token="<sks>", class_word="sphere", steps=args.steps, seed=args.seed,
                                   class_prompt=args.class_prompt)
        folder, seconds = adapter(root, f"pink-{method}", pink, config)
        row = shape_and_colour(asset(root, f"pink-{method}", "a <sks> sphere", [folder], args.gen_steps, args.seed),
                               "a red sphere", PINK)
        forgetting = {caption: against(asset(root, f"{method}-{caption}", caption, [folder], args.gen_steps,
                                             args.seed), baselines[caption]) for caption in FORGETTING_CAPTIONS}
        results.setdefault("pink_sphere", {})[method] = {**row, "personalize_s": round(seconds, 1)}
        results.setdefault("forgetting", {})[method] = {
            "mean_iou_vs_base": round(float(np.mean([f["iou_vs_base"] for f in forgetting.values()])), 4),
            "mean_colour_error_vs_base": round(float(np.mean([f["colour_error_vs_base"]
                                                              for f in forgetting.values()])), 4),
            "captions": forgetting}
        save()
    if "held_out_ti" not in results:
        torus = render_subject(root / "subjects" / "purple-torus", "torus", tw.COLOURS["purple"])
        config = PersonalizeConfig(method="textual-inversion", token="<tok>", class_word="torus", steps=args.steps,
                                   seed=args.seed)
        folder, seconds = adapter(root, "purple-torus-ti", torus, config)
        glb = asset(root, "purple-torus-ti", "a <tok>", [folder], args.gen_steps, args.seed)
        results["held_out_ti"] = {**shape_and_colour(glb, "a purple torus", tw.COLOURS["purple"]),
                                  "personalize_s": round(seconds, 1)}
        save()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
