"""The PyTorch hash grid's paths on the same points: the reference path (``[L, N, 8]`` index, weight
and feature tensors), the fused path (``_FusedLevels``: corner by corner, recomputed in backward), and,
with ``--compile``, ``torch.compile`` of the corner-by-corner forward (its first call includes the
compile; later calls show its speed). Same math on every path: the JSON reports the largest
difference of each path's features from the reference.

Prints ONE JSON object: per path the seconds of a forward without gradients, a forward with them and
its backward (means over ``--repeats`` after one warm-up), and the peak bytes of one no-grad forward's
temporaries as the encoding estimates them (``bytes_per_point``; the reference path has none).

    python benchmarks/hashgrid_speed.py --points 100000 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from dreamsmith.representations import hashgrid
from dreamsmith.representations.hashgrid import HashGridConfig, TorchHashGrid


def timed(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.mean(times)


def corner_loop(grid: TorchHashGrid) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fused path's forward as a plain function of the points (what ``torch.compile`` can trace)."""
    resolutions = grid.hashed_resolutions.tolist()

    def encode(positions: torch.Tensor) -> torch.Tensor:
        outputs = []
        for level, resolution in enumerate(resolutions):
            table = grid.hash_tables[level]
            accumulated = torch.zeros(positions.shape[0], table.shape[1])
            for index, weight, _ in hashgrid._level_corners(positions, resolution, table.shape[0]):
                accumulated = accumulated + table[index] * weight[:, None]
            outputs.append(accumulated)
        return torch.cat(outputs, dim=-1)

    return encode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the corner loop")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    grid = TorchHashGrid(HashGridConfig())  # the dreamfusion preset's encoding
    positions = torch.rand(args.points, 3)
    upstream = torch.randn(args.points, grid.n_output_dims)
    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        grid.fused = False
        reference = grid(positions)
    for name, fused in (("reference", False), ("fused", True)):
        grid.fused = fused

        def forward_backward() -> None:
            grid.zero_grad(set_to_none=True)
            (grid(positions) * upstream).sum().backward()

        with torch.no_grad():
            no_grad_s = timed(lambda: grid(positions), args.repeats)
            difference = float((grid(positions) - reference).abs().max())
        results[name] = {"no_grad_forward_s": round(no_grad_s, 4),
                         "forward_backward_s": round(timed(forward_backward, args.repeats), 4),
                         "max_abs_diff": difference}
    results["fused"]["bytes_per_point"] = grid.bytes_per_point()
    if args.compile:
        hashed = grid.hash_tables.shape[0] * grid.config.n_features_per_level
        with torch.no_grad():
            eager = corner_loop(grid)
            compiled = torch.compile(eager, dynamic=True)
            started = time.perf_counter()
            first = compiled(positions)
            compile_s = time.perf_counter() - started
            results["compiled_hashed_levels"] = {
                "first_call_s": round(compile_s, 2),
                "no_grad_forward_s": round(timed(lambda: compiled(positions), args.repeats), 4),
                "eager_same_function_s": round(timed(lambda: eager(positions), args.repeats), 4),
                "max_abs_diff": float((first - reference[:, -hashed:]).abs().max()),
            }
    print(json.dumps({"benchmark": "hashgrid_speed", "points": args.points, "threads": torch.get_num_threads(),
                      "levels": grid.config.n_levels, "dense_levels": len(grid.dense_resolutions),
                      "paths": results, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
