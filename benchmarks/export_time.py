"""Export wall time per 10k triangles, per pipeline step (cleanup, decimate, unwrap, bake, write).

The mesh is marching cubes of a bumpy ball (about 4x the largest budget, so decimation has work to do)
with a smooth analytic albedo; ``--run RUN_DIR`` exports a real run directory instead, so ``bake``
includes evaluating the run's NeRF albedo at every texel. Each budget is exported once (one warm-up
export first, so imports and first-call costs are not counted).

Prints ONE JSON object: per budget the triangles written, seconds per step and seconds per step per
10k triangles written (``per_10k``; cleanup runs on the mesh before decimation, so its figure grows
with the input), plus the machine's CPU count and torch threads.

    python benchmarks/export_time.py                                   # 5k, 10k, 20k triangles, 1024², GLB
    python benchmarks/export_time.py --formats glb obj usdz --texture-size 2048
    python benchmarks/export_time.py --run runs/a-red-cube --triangles 5000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from dreamsmith.exporters.isosurface import marching_cubes, sample_grid
from dreamsmith.exporters.pipeline import ExportOptions, export_mesh
from dreamsmith.representations.mesh import Mesh

STEPS = ("cleanup", "decimate", "unwrap", "bake", "write")


def bumpy_ball(resolution: int) -> Mesh:
    """A ball of radius ~0.35 m with bumps, so decimation and charts are not trivial."""

    def density(points: torch.Tensor) -> torch.Tensor:
        radius = points.norm(dim=-1)
        bumps = 0.03 * torch.sin(9 * points[:, 0]) * torch.sin(7 * points[:, 1]) * torch.sin(8 * points[:, 2])
        return 20.0 * (0.35 + bumps - radius)

    return marching_cubes(sample_grid(density, 0.5, resolution), 0.0, 0.5)


def albedo(points: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.4 * torch.stack([torch.sin(4 * points[:, 0]), torch.cos(3 * points[:, 1]),
                                    torch.sin(5 * points[:, 2])], -1)


def export_once(budget: int, args: argparse.Namespace, out: str) -> dict:
    started = time.perf_counter()
    if args.run:
        from dreamsmith.engine.export import export_run

        result = export_run(args.run, formats=args.formats, texture_size=args.texture_size, max_triangles=budget,
                            out=out, preview_resolution=0, device="cpu")
    else:
        options = ExportOptions(formats=tuple(args.formats), texture_size=args.texture_size, max_triangles=budget,
                                preview_resolution=0)
        result = export_mesh(args.mesh, albedo, out, options)
    total = time.perf_counter() - started
    triangles = result.mesh.n_faces
    seconds = {step: round(result.timings.get(step, 0.0), 4) for step in (*STEPS, "qa")}
    return {
        "triangles": triangles,
        "seconds": {**seconds, "total": round(total, 4)},
        "per_10k": {step: round(value * 10_000 / triangles, 4) for step, value in {**seconds, "total": total}.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triangles", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--formats", nargs="+", default=["glb"])
    parser.add_argument("--run", help="a finished run directory to export instead of the analytic ball")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.mesh = None if args.run else bumpy_ball(resolution=min(192, max(64, int(1.2 * max(args.triangles) ** 0.5))))
    results = {}
    with tempfile.TemporaryDirectory(prefix="dreamsmith-export-bench-") as folder:
        export_once(min(args.triangles), args, os.path.join(folder, "warmup"))
        for budget in args.triangles:
            results[str(budget)] = export_once(budget, args, os.path.join(folder, str(budget)))
    report = {
        "benchmark": "export_time",
        "source": args.run or "bumpy ball (marching cubes)",
        "input_triangles": None if args.run else args.mesh.n_faces,
        "texture_size": args.texture_size,
        "formats": args.formats,
        "budgets": results,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
