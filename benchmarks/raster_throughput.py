"""Throughput of the CPU mesh rasterizer against the raw Open3D ray cast it builds on.

For UV spheres of ~10k and ~100k triangles at 128^2 and 512^2 (a batch of cameras around the mesh),
times, as medians over repetitions after one warm-up:

- ``raw_raycast``: Open3D alone, what any visibility query costs: build the ``RaycastingScene`` and
  cast the same rays (NumPy in, NumPy out);
- ``rasterize_forward``: ``rasterize`` (that ray cast + barycentrics and depth recomputed in PyTorch);
- ``render_forward``: ``MeshRenderer`` (rasterize + interpolated vertex colours and normals,
  lambertian shading, silhouette antialiasing);
- ``render_forward_backward``: the same plus ``backward`` of a loss on rgb, opacity and depth down to
  the vertex positions.

Prints ONE JSON object: per case the pixels/s of each and ``overhead_*`` = raw pixels/s over that
one's (1.0 = no cost beyond the ray cast). Ratios are taken within one run (machines are noisy).

    python benchmarks/raster_throughput.py            # 3 repetitions, 4 cameras
    python benchmarks/raster_throughput.py --quick    # 1 repetition, 1 camera
    python benchmarks/raster_throughput.py --threads 1  # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import trimesh

from dreamsmith.renderers.cameras import Cameras
from dreamsmith.renderers.mesh_renderer import MeshRenderer
from dreamsmith.renderers.raster_cpu import cast_rays
from dreamsmith.renderers.rasterizer import rasterize

SPHERE_COUNTS = {10_000: (50, 50), 100_000: (158, 158)}  # UV sphere (rings, segments) -> ~triangles
RESOLUTIONS = (128, 512)


def sphere(rings_segments: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.uv_sphere(radius=0.45, count=list(rings_segments))
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int64)


def median_seconds(run: Callable[[], object], repetitions: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, repetitions: int) -> dict[str, float]:
    renderer = MeshRenderer()
    colors = torch.rand(vertices.shape, generator=torch.Generator().manual_seed(0))
    origins, directions = cameras.generate_rays()
    rays = torch.cat([origins, directions], dim=-1).reshape(-1, 6).numpy()
    vertices_np, faces_np = vertices.numpy(), faces.numpy()

    def forward_backward() -> None:
        points = vertices.clone().requires_grad_(True)
        out = renderer(points, faces, cameras, albedo=colors, shading="lambertian")
        (out.rgb.mean() + out.opacity.mean() + out.depth.mean()).backward()

    seconds = {
        "raw_raycast": median_seconds(lambda: cast_rays(vertices_np, faces_np, rays), repetitions),
        "rasterize_forward": median_seconds(lambda: rasterize(vertices, faces, cameras), repetitions),
        "render_forward": median_seconds(
            lambda: renderer(vertices, faces, cameras, albedo=colors, shading="lambertian"), repetitions
        ),
        "render_forward_backward": median_seconds(forward_backward, repetitions),
    }
    pixels = len(cameras) * cameras.height * cameras.width
    result = {f"{name}_pixels_per_s": pixels / s for name, s in seconds.items()}
    for name, s in seconds.items():
        if name != "raw_raycast":
            result[f"overhead_{name}"] = s / seconds["raw_raycast"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 repetition and 1 camera per case")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repetitions, n_cameras = (1, 1) if args.quick else (args.repetitions, args.cameras)

    azimuth = torch.arange(n_cameras, dtype=torch.float32) * (360.0 / n_cameras) + 15.0
    cases = []
    for target, rings_segments in SPHERE_COUNTS.items():
        vertices, faces = sphere(rings_segments)
        for resolution in RESOLUTIONS:
            cameras = Cameras.from_spherical(
                azimuth, torch.tensor(20.0), torch.tensor(2.0), torch.tensor(40.0), resolution
            )
            print(f"{faces.shape[0]} triangles at {resolution}^2 ...", file=sys.stderr)
            case = {"triangles": int(faces.shape[0]), "target_triangles": target, "resolution": resolution}
            case.update({k: round(v, 3) for k, v in measure(vertices, faces, cameras, repetitions).items()})
            cases.append(case)
    report = {
        "benchmark": "raster_throughput",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cameras": n_cameras,
        "repetitions": repetitions,
        "numpy": np.__version__,
        "cases": cases,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
