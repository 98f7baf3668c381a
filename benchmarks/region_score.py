"""Regional prompts on the embedded prior: the toy world's cylinder, grey, textured with one colour above
y = 0 and another below, and each half's colour scored against its truth.

Prints one JSON object: per region its colour error (mean absolute difference of the mean albedo of the
pixels whose surface lies in the region, over the 8 score views, against the truth colour), the wall
time of the run, and the settings.

    python benchmarks/region_score.py                                 # "y>0: red" / "y<0: blue", toy-texture
    python benchmarks/region_score.py --base-ratio 0 --steps 100 --keep runs/regions
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import trimesh

from dreamsmith.engine import generate, make_config
from dreamsmith.engine.run import Progress
from dreamsmith.guidance.regional import region_masks
from dreamsmith.regions import parse_region
from dreamsmith.renderers.mesh_renderer import MeshRenderer, MeshRendererConfig
from dreamsmith.toyworld.score import ground_truth_mesh, load_mesh, score_cameras
from dreamsmith.toyworld.world import COLOURS, parse_caption

REGIONS = ["y>0: a red cylinder", "y<0: a blue cylinder"]


@torch.no_grad()
def region_colour_errors(asset_path: Path, specs: list[str]) -> dict[str, dict[str, float]]:
    """Per region: the mean albedo of its pixels in the score views, its truth colour (the region prompt's
    toyworld colour) and their mean absolute difference."""
    asset = load_mesh(asset_path)
    cameras = score_cameras()
    render = MeshRenderer(MeshRendererConfig(antialias=False))(
        torch.from_numpy(asset.vertices), torch.from_numpy(asset.faces), cameras,
        albedo=torch.from_numpy(asset.vertex_colors), shading="albedo")
    regions = [parse_region(spec) for spec in specs]
    masks = region_masks(render, cameras, regions).bool()  # [B, R, H, W]
    scores = {}
    for index, region in enumerate(regions):
        colour = render.rgb[masks[:, index]].mean(0)
        truth = torch.tensor(COLOURS[parse_caption(region.prompt)[0]])
        scores[region.expression] = {"colour_error": round(float((colour - truth).abs().mean()), 4),
                                     "mean_colour": [round(float(c), 3) for c in colour],
                                     "pixels": int(masks[:, index].sum())}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="a gray cylinder", help="The base prompt.")
    parser.add_argument("--region", dest="regions", action="append", default=None,
                        help="'EXPRESSION: PROMPT' (repeatable; default: y>0 red, y<0 blue).")
    parser.add_argument("--base-ratio", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=None, help="Steps (default: the preset's).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE config override.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the run directory here (previews, asset).")
    args = parser.parse_args()
    specs = args.regions or REGIONS
    conditioners = [{"name": "regions", "regions": specs, "base_ratio": args.base_ratio}]
    with tempfile.TemporaryDirectory() as folder:
        truth = ground_truth_mesh("a gray cylinder")
        grey = Path(folder) / "grey.glb"
        trimesh.Trimesh(truth.vertices, truth.faces, process=False).export(grey)
        run = args.keep or Path(folder) / "run"
        config = make_config(args.base, preset="toy-texture", steps=args.steps, seed=args.seed,
                             overrides=[f"uv_texture.mesh={grey}", "guidance.conditioners=" + json.dumps(conditioners),
                                        *args.overrides])
        started = time.perf_counter()
        generate(config, run, progress=Progress(), overwrite=True)
        wall = time.perf_counter() - started
        regions = region_colour_errors(run / "asset.glb", specs)
    print(json.dumps({"base": args.base, "base_ratio": args.base_ratio, "steps": config.stages[0].steps,
                      "seed": args.seed, "regions": regions, "wall_s": round(wall, 1)}, indent=2))


if __name__ == "__main__":
    main()
