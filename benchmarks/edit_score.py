"""Edit a generated "a red cube" with words and score the edits against the toy world's truth (issue 12's table).

For each method (ip2p: InstructPix2Pix score distillation, in2n: Instruct-NeRF2NeRF's dataset update, both on an
InstructPix2Pix-style model, by default the embedded ``toyworld-ip2p``; p2p: Prompt-to-Prompt on the source's own
text-to-image model, ``toyworld``) two edits of the same source run:

- "blue": ip2p/in2n "make it blue", p2p "a red cube" -> "a blue cube". Scored: colour error against blue, volume
  IoU to the cube relative to the source's (target >= 0.8), silhouette IoU to the source asset (target >= 0.9)
  and colour error <= 0.08 (ip2p, in2n) / 0.10 (p2p).
- "sphere": ip2p/in2n "turn it into a sphere", p2p "a red cube" -> "a red sphere". Scored: volume and silhouette
  IoU to the red sphere (target >= 0.75).

The source is generated once (toy preset, ``--seed``) or given with ``--source RUN_DIR``. Prints one JSON object
and writes ``edit_score.json`` and ``edit_score.png`` (source and edits' posters, one row per method) under
``--out``. Reruns resume: a finished edit keeps its ``score.json`` and is skipped; an interrupted one resumes.

    OMP_NUM_THREADS=1 python benchmarks/edit_score.py --out runs/edit-score --jobs 2
    python benchmarks/edit_score.py --methods p2p --steps 100 --out runs/edit-p2p
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from toyworld_score import one_thread, score_fields  # noqa: E402

from dreamsmith.engine.edit_config import DEFAULT_EDIT_MODEL, IMAGE_METHODS, EditRequest, edit_config  # noqa: E402
from dreamsmith.engine.presets import check_model  # noqa: E402
from dreamsmith.errors import DreamsmithError  # noqa: E402

METHODS = ("ip2p", "in2n", "p2p")
SOURCE_PROMPT = "a red cube"
TASKS = {
    # task: (instruction for ip2p/in2n, edited prompt for p2p, the caption whose truth scores it)
    "blue": ("make it blue", "a blue cube", "a blue cube"),
    "sphere": ("turn it into a sphere", "a red sphere", "a red sphere"),
}
TARGETS = {"blue_colour_error": {"ip2p": 0.08, "in2n": 0.08, "p2p": 0.10}, "blue_volume_iou_ratio": 0.8,
           "blue_iou_to_source": 0.9, "sphere_iou": 0.75}


def write_json_atomically(path: Path, data: dict) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, indent=1))
    os.replace(partial, path)


def make_source(root: Path, seed: int, steps: int | None, overrides: list[str]) -> Path:
    """The source run "a red cube" under ``root/source`` (generated once; an interrupted one resumes)."""
    from dreamsmith.engine import generate, make_config

    out = root / "source"
    if (out / "report.json").is_file():
        return out
    config = make_config(SOURCE_PROMPT, preset="toy", steps=steps, seed=seed, overrides=overrides)
    resume = (out / "checkpoints" / "last.pt").is_file()
    generate(config, out, resume=resume, overwrite=not resume)
    return out


def source_score(source: Path) -> dict:
    """The source asset against the red cube (what the edits' volume IoU is relative to)."""
    from dreamsmith.toyworld.score import load_mesh, score_mesh

    return score_fields(score_mesh(load_mesh(source / "asset.glb"), SOURCE_PROMPT))


def edit_request(method: str, task: str, source: Path, model: str | None, p2p_model: str | None, steps: int | None,
                 overrides: list[str]) -> EditRequest:
    instruction, edited_prompt, _ = TASKS[task]
    image_method = method in IMAGE_METHODS
    return EditRequest(source=source, instruction=instruction if image_method else edited_prompt, method=method,
                       model=model if image_method else p2p_model, steps=steps, overrides=tuple(overrides))


def run_one(method: str, task: str, source: Path, root: Path, model: str | None, p2p_model: str | None,
            steps: int | None, overrides: list[str]) -> dict:
    """One edit of the source, scored (or the score a finished earlier run left)."""
    from dreamsmith.engine.edit_source import run_edit
    from dreamsmith.toyworld.score import load_mesh, score_cameras, score_mesh, silhouette_iou

    out = root / f"{method}-{task}"
    done = out / "score.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "skipped": True}
    request = edit_request(method, task, source, model, p2p_model, steps, overrides)
    config, kind = edit_config(request)
    resume = (out / "checkpoints" / "last.pt").is_file()
    started = time.perf_counter()
    run_edit(config, source, kind, out, resume=resume, overwrite=not resume)
    wall = time.perf_counter() - started
    mesh, caption = load_mesh(out / "asset.glb"), TASKS[task][2]
    per_view, _, _ = silhouette_iou(mesh, load_mesh(source / "asset.glb"), score_cameras())
    result = {"method": method, "task": task, "prompt": request.instruction, "caption": caption,
              **score_fields(score_mesh(mesh, caption)), "iou_to_source": round(sum(per_view) / len(per_view), 4),
              "steps": config.stages[0].steps, "wall_time_s": round(wall, 1), "resumed": resume}
    write_json_atomically(done, result)
    return {**result, "skipped": False}


def table(rows: list[dict], source: dict, methods: list[str]) -> dict:
    """Per method: the issue's numbers, and whether each meets its target."""
    summary = {}
    for method in methods:
        blue = next((r for r in rows if r["method"] == method and r["task"] == "blue"), None)
        sphere = next((r for r in rows if r["method"] == method and r["task"] == "sphere"), None)
        row: dict = {}
        if blue:
            row |= {"blue_colour_error": blue["colour_error"], "blue_volume_iou": blue["volume_iou"],
                    "blue_volume_iou_ratio": round(blue["volume_iou"] / max(source["volume_iou"], 1e-9), 4),
                    "blue_iou_to_source": blue["iou_to_source"], "blue_wall_time_s": blue["wall_time_s"]}
        if sphere:
            row |= {"sphere_iou": sphere["iou"], "sphere_volume_iou": sphere["volume_iou"],
                    "sphere_wall_time_s": sphere["wall_time_s"]}
        row["meets"] = meets(row, method)
        summary[method] = row
    return summary


def meets(row: dict, method: str) -> dict:
    checks = {}
    if "blue_colour_error" in row:
        checks["blue_colour_error"] = row["blue_colour_error"] <= TARGETS["blue_colour_error"][method]
        checks["blue_volume_iou_ratio"] = row["blue_volume_iou_ratio"] >= TARGETS["blue_volume_iou_ratio"]
        checks["blue_iou_to_source"] = row["blue_iou_to_source"] >= TARGETS["blue_iou_to_source"]
    if "sphere_volume_iou" in row:
        checks["sphere_iou"] = min(row["sphere_iou"], row["sphere_volume_iou"]) >= TARGETS["sphere_iou"]
    return checks


def posters(source: Path, root: Path, methods: list[str]):
    """One row per method: the source's poster, then its edits' (blue, sphere); missing ones blank."""
    from PIL import Image

    size, columns = 128, ["source", *TASKS]
    canvas = Image.new("RGB", (size * len(columns), size * len(methods)), "white")
    for y, method in enumerate(methods):
        for x, column in enumerate(columns):
            poster = (source if column == "source" else root / f"{method}-{column}") / "asset_poster.png"
            if poster.is_file():
                canvas.paste(Image.open(poster).convert("RGB").resize((size, size)), (size * x, size * y))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--source", type=Path, default=None, help="a finished run of \"a red cube\" (default: "
                        "generate one under --out with the toy preset)")
    parser.add_argument("--model", default=None, help=f"the InstructPix2Pix-style model of ip2p and in2n (default "
                        f"{DEFAULT_EDIT_MODEL})")
    parser.add_argument("--p2p-model", default=None, help="p2p's text-to-image model (default: the source's)")
    parser.add_argument("--steps", type=int, default=None, help="edit steps (default: the source's last stage's)")
    parser.add_argument("--source-steps", type=int, default=None, help="steps of the generated source")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated source (edits keep it)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE override of every edit (repeatable)")
    parser.add_argument("--source-set", dest="source_overrides", action="append", default=[],
                        help="KEY=VALUE override of the generated source (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("runs/edit-score"))
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    args = parser.parse_args()

    if any(method in IMAGE_METHODS for method in args.methods):
        try:  # before the source's minutes: the editing model must exist
            check_model(args.model or DEFAULT_EDIT_MODEL)
        except DreamsmithError as error:
            raise SystemExit(f"error: {error} (or run --methods p2p alone)") from None
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        source = args.source.resolve() if args.source else make_source(args.out, args.seed, args.source_steps,
                                                                         args.source_overrides)
        before = source_score(source)
        jobs = [(m, t, source, args.out, args.model, args.p2p_model, args.steps, args.overrides)
                for t in args.tasks for m in args.methods]
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=one_thread) as pool:
                rows = list(pool.map(run_one, *zip(*jobs, strict=True)))
        else:
            rows = [run_one(*job) for job in jobs]
    except DreamsmithError as error:
        raise SystemExit(f"error: {error}") from None
    result = {"benchmark": "edit_score", "source": str(source), "source_score": before, "targets": TARGETS,
              "table": table(rows, before, args.methods), "runs": rows}
    write_json_atomically(args.out / "edit_score.json", result)
    posters(source, args.out, args.methods).save(args.out / "edit_score.png")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
