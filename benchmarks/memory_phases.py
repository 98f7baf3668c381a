"""Peak resident memory of a run's phases, per preset: optimization steps (per stage), preview renders,
the density volume, the auto threshold, and the export (surface, unwrap, bake, write, previews).

Each preset runs in its own process (peaks do not mix); inside it a thread samples the process's RSS
every 10 ms and each phase reports the largest value seen while it ran (the whole process: Python,
torch, the model and everything the phases before it left allocated). ``dreamfusion`` and ``magic3d``
use the tests' tiny random SD-shaped model (so the model costs nothing and the engine is what is
measured); ``toy`` and ``toy-mesh`` the embedded prior. Every stage runs ``--steps`` steps.
Prints ONE JSON object: per preset, per phase, ``peak_rss_gb`` and ``seconds`` (with ``--device
cuda`` also ``peak_gpu_gb``, torch's largest allocation in the phase), and the memory budget.

    python benchmarks/memory_phases.py                       # all presets, 2 steps per stage
    python benchmarks/memory_phases.py --preset dreamfusion --steps 3 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("dreamfusion", "magic3d", "toy", "toy-mesh")
PROMPTS = {"dreamfusion": "a hamburger", "magic3d": "a hamburger", "toy": "a gray capsule", "toy-mesh": "a red cube"}
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class PhasePeaks:
    """Peak RSS per named phase, sampled by a background thread."""

    def __init__(self, device: str, interval: float = 0.01) -> None:
        self.cuda = device == "cuda"
        self.interval = interval
        self.peak = rss()
        self.phases: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(self.interval)

    @contextmanager
    def phase(self, name: str):
        import torch

        print(f"phase {name}", file=sys.stderr, flush=True)  # so benchmarks/peak_rss.py can name it too
        self.peak = rss()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.peak = max(self.peak, rss())
        self.phases[name] = {"peak_rss_gb": round(self.peak / 2**30, 3),
                             "seconds": round(time.perf_counter() - started, 2)}
        if self.cuda:
            self.phases[name]["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(preset: str, steps: int, device_name: str) -> dict[str, Any]:
    import torch

    from dreamsmith.engine.export import export_representation
    from dreamsmith.engine.memory import memory_budget
    from dreamsmith.engine.overrides import make_config
    from dreamsmith.engine.presets import default_model, resolve_model
    from dreamsmith.engine.stage import Stage
    from dreamsmith.exporters.pipeline import ExportOptions
    from dreamsmith.guidance.loading import load_prior

    peaks = PhasePeaks(device_name)
    device = torch.device(device_name)
    with tempfile.TemporaryDirectory(prefix="dreamsmith-memory-") as work:
        model = None
        if preset in ("dreamfusion", "magic3d"):
            sys.path.insert(0, str(ROOT / "tests"))
            from conftest import build_tiny_sd

            model = str(build_tiny_sd(Path(work) / "tiny-sd"))
        base = make_config(PROMPTS[preset], preset=preset, model=model, device=device_name)
        overrides = [f"{stage.name}.steps={steps}" for stage in base.stages]
        config = make_config(PROMPTS[preset], preset=preset, model=model, device=device_name, overrides=overrides)
        with peaks.phase("load_model"):
            prior = load_prior(resolve_model(config.model or default_model(preset)), device=device)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        stage = None
        nerf = None
        for index, stage_config in enumerate(config.stages):
            previous = stage
            torch.manual_seed(config.seed + index)
            stage = Stage(stage_config, prior, config.prompt, device)
            if previous is not None:
                stage.representation.init_from(previous.representation, config.export)
            with peaks.phase(f"steps:{stage_config.name}"):
                for step in range(stage_config.steps):
                    stage.step(step, generator)
            if stage_config.representation == "nerf":
                nerf = stage.representation
        with peaks.phase("previews"):
            stage.render_previews()
        if nerf is not None:
            export = replace(config.export, isosurface_threshold="auto")
            with peaks.phase("volume"):
                volume = nerf.density_volume(export)
            with peaks.phase("threshold"):
                nerf.surface_threshold(export, volume)
        with peaks.phase("export"):
            options = ExportOptions(formats=tuple(config.export.formats), texture_size=config.export.texture_size,
                                    preview_resolution=config.export.preview_resolution)
            try:
                export_representation(stage.representation, config, device, Path(work) / "out", options)
                exported = "ok"
            except Exception as error:  # a 2-step field may hold no surface; the phase is still measured
                exported = f"{type(error).__name__}: {error}"[:200]
    peaks.stop()
    return {"preset": preset, "device": device_name, "steps_per_stage": steps, "threads": torch.get_num_threads(),
            "memory_budget_gb": round(memory_budget() / 2**30, 2), "export": exported,
            "peak_rss_gb": max(p["peak_rss_gb"] for p in peaks.phases.values()), "phases": peaks.phases}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default=None, help="one preset (default: all, one process each)")
    parser.add_argument("--steps", type=int, default=2, help="steps per stage")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.preset:
        print(json.dumps(measure(args.preset, args.steps, args.device)), flush=True)
        return
    results = {}
    for preset in PRESETS:
        done = subprocess.run([sys.executable, __file__, "--preset", preset, "--steps", str(args.steps),
                               "--device", args.device],
                              capture_output=True, text=True)
        lines = done.stdout.strip().splitlines()
        results[preset] = json.loads(lines[-1]) if done.returncode == 0 and lines else {
            "error": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    print(json.dumps({"benchmark": "memory_phases", "presets": results}), flush=True)


if __name__ == "__main__":
    main()
