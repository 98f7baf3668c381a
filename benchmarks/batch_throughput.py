"""Batch throughput with 1 and 2 local workers, and the batch machinery's per-job overhead against a lone
``generate``, on the embedded prior.

The same N jobs (distinct captions and seeds, the toy preset shrunk by ``--steps`` and small renders)
run through ``run_batch`` with 1 worker (all CPU threads), then with 2 workers (the threads split
between them), then each job alone through ``generate`` in this process (after an uncounted warm-up).

Per-job overhead is taken inside the 1-worker batch itself, so it shares that run's machine load:
(batch wall time - the sum of the jobs' own wall times in their worker, which is their ``generate``
call) / N, i.e. worker start-up and imports, the manifest's validation, the ledger, IPC, summary and
gallery. The lone ``generate``s give the per-job figure to compare it with.

Prints ONE JSON object: seconds per way, jobs per minute, the 2-worker/1-worker throughput ratio, the
overhead, and the machine's CPU count and load averages (on a shared machine read the ratio with them).

    python benchmarks/batch_throughput.py --jobs 4 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no weight-loading bars in the output
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from dreamsmith.engine import generate, make_config  # noqa: E402
from dreamsmith.engine.batch import BatchOptions, run_batch  # noqa: E402

CAPTIONS = ["a red cube", "a blue sphere", "a green torus", "a yellow cone", "a purple cylinder", "a white capsule",
            "an orange cube", "a gray sphere"]
SMALL = ["camera.batch_size=2", "camera.eval_resolution=32", "camera.eval_views=4", "renderer.n_samples=24",
         "nerf.hash_grid.n_levels=4", "nerf.hash_grid.log2_hashmap_size=14", "export.isosurface_resolution=40",
         "export.preview_resolution=48", "export.texture_size=128", "preview_every=0"]


def jobs(count: int, steps: int) -> list[dict]:
    return [{"prompt": CAPTIONS[i % len(CAPTIONS)], "seed": i, "steps": steps} for i in range(count)]


def lone_generates(rows: list[dict], folder: Path) -> float:
    """Wall seconds of generating every row alone in this process (after one uncounted warm-up)."""
    torch.set_num_threads(os.cpu_count() or 1)
    generate(make_config(**rows[0], overrides=SMALL), folder / "warm-up")
    started = time.perf_counter()
    for index, row in enumerate(rows):
        generate(make_config(**row, overrides=SMALL), folder / f"lone-{index}")
    return time.perf_counter() - started


def batch(rows: list[dict], folder: Path, workers: int) -> tuple[float, float]:
    """(wall seconds of the batch, the sum of its jobs' wall seconds inside their workers)."""
    manifest = folder / f"manifest-{workers}.jsonl"
    manifest.write_text("".join(json.dumps({**row, "overrides": SMALL}) + "\n" for row in rows))
    started = time.perf_counter()
    result = run_batch(manifest, BatchOptions(workers=workers, out=folder / f"batch-{workers}", retry=0))
    elapsed = time.perf_counter() - started
    if result.counts["done"] != len(rows):
        sys.exit(f"the {workers}-worker batch did not finish every job: {result.counts}")
    return elapsed, sum(job["wall_time_s"] for job in result.summary["jobs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=4, help="Jobs per way.")
    parser.add_argument("--steps", type=int, default=12, help="Optimization steps per job.")
    args = parser.parse_args()
    rows = jobs(args.jobs, args.steps)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        one, one_jobs = batch(rows, folder, 1)
        two, two_jobs = batch(rows, folder, 2)
        lone = lone_generates(rows, folder)
    overhead = (one - one_jobs) / args.jobs
    print(json.dumps({
        "jobs": args.jobs,
        "steps": args.steps,
        "batch_1_worker_s": round(one, 2),
        "batch_2_workers_s": round(two, 2),
        "jobs_per_min_1_worker": round(60 * args.jobs / one, 3),
        "jobs_per_min_2_workers": round(60 * args.jobs / two, 3),
        "throughput_ratio_2_over_1": round(one / two, 3),
        "job_s_in_worker_1_worker": round(one_jobs / args.jobs, 2),
        "job_s_in_worker_2_workers": round(two_jobs / args.jobs, 2),
        "lone_generate_s_per_job": round(lone / args.jobs, 2),
        "per_job_overhead_s": round(overhead, 2),
        "per_job_overhead_fraction_of_lone_generate": round(overhead / (lone / args.jobs), 3),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }, indent=2))


if __name__ == "__main__":
    main()
