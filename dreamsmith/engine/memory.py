"""The memory budget: how much memory a run may use, what a config needs, and how many field points
one batched evaluation may hold at once (torch-free, so the config check runs before torch loads).

The budget comes from ``--memory-budget`` (the ``DREAMSMITH_MEMORY_BUDGET`` environment variable),
else half of the memory available now. It is a property of the machine, not of the run: it is not
part of ``config.yaml``, and a resumed run may use another.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from dreamsmith.errors import ConfigError

ENV = "DREAMSMITH_MEMORY_BUDGET"
AVAILABLE_SHARE = 0.5
"""Share of the memory available at start that the default budget takes (the machine is shared)."""
CHUNK_SHARE = 0.25
"""Share of the budget one batched field evaluation (a chunk of points) may take."""
MIN_CHUNK_POINTS = 4096
ADAM_COPIES = 4
"""Parameter, gradient and Adam's two moments."""
KEPT_SHARE = 0.25
"""Share of a training render's samples re-evaluated with gradients (the visible ones; measured
below 10 % on the presets' first steps, so this leaves room for a field that fills more of space)."""
NORMAL_QUERIES = 4
"""Field queries per visible sample with finite-difference normals (the point and three offsets)."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory_size(text: str | int) -> int:
    """``"4G"``, ``"4GB"``, ``"4GiB"``, ``"512M"``, ``"1.5g"`` or a number of bytes -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"--memory-budget must be a size such as 4G, 512M or 6GB, got {text!r}")
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < 2**27:
        raise ConfigError(f"--memory-budget {text!r} is below 128M; a run cannot fit in it")
    return int(size)


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``, else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget() -> int:
    """The run's budget in bytes: ``DREAMSMITH_MEMORY_BUDGET`` if set, else half the memory available."""
    configured = os.environ.get(ENV)
    return parse_memory_size(configured) if configured else int(AVAILABLE_SHARE * available_memory())


def chunk_points(bytes_per_point: int, budget: int | None = None) -> int:
    """Points per batched field evaluation: ``CHUNK_SHARE`` of the budget over each point's cost."""
    budget = memory_budget() if budget is None else budget
    return max(MIN_CHUNK_POINTS, int(budget * CHUNK_SHARE) // max(1, bytes_per_point))


def hash_grid_entries(hash_grid: Any) -> int:
    """Feature entries (all levels) of a hash grid: dense levels ``(r+1)^3``, the others a full table."""
    table = 2**hash_grid.log2_hashmap_size
    entries = 0
    for level in range(hash_grid.n_levels):
        resolution = int(hash_grid.base_resolution * hash_grid.per_level_scale**level)
        entries += min((resolution + 1) ** 3, table)
    return entries * hash_grid.n_features_per_level


def nerf_point_bytes(nerf: Any, with_gradients: bool) -> int:
    """Bytes one field query holds: features, MLP activations (both heads) and sampler bookkeeping;
    with gradients, what autograd keeps for backward as well (about three times as much)."""
    features = nerf.hash_grid.n_levels * nerf.hash_grid.n_features_per_level
    activations = 4 * (3 * features + 2 * nerf.hidden_dim * (nerf.hidden_layers + 1) + 16) + 160
    return activations * (3 if with_gradients else 1)


def stage_memory(stage: Any) -> dict[str, int]:
    """Estimated peak bytes of a stage's parts: its parameters with optimizer state, and one training
    render (a NeRF's samples: every one without gradients, then ``KEPT_SHARE`` of them with gradients
    and their finite-difference normals)."""
    parameters = ADAM_COPIES * 4 * hash_grid_entries(stage.nerf.hash_grid)
    pixels = stage.camera.batch_size * stage.camera.resolution**2
    if stage.representation == "nerf":
        samples = pixels * stage.renderer.n_samples
        kept = KEPT_SHARE * NORMAL_QUERIES * nerf_point_bytes(stage.nerf, True)
        render = int(samples * (nerf_point_bytes(stage.nerf, False) + kept))
    else:
        vertices = (stage.dmtet.resolution + 1) ** 3
        parameters += ADAM_COPIES * 4 * 4 * vertices  # SDF and deformation
        render = pixels * 2048 + vertices * 512  # rasterizer buffers; marching tets over every vertex
    return {"parameters": parameters, "render": render}


def model_bytes(model: str) -> int:
    """Bytes of a local model folder's weight files (0 for a Hugging Face id: not known before loading)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.suffix in WEIGHT_SUFFIXES)


def check_memory(config: Any, model_folder: str, budget: int | None = None) -> int:
    """Refuse a config whose stages cannot fit in the memory budget beside the model in
    ``model_folder``, naming the knobs; returns the budget. What can shrink (chunks of batched
    evaluations: previews, the density volume, baking) is sized from the budget at run time."""
    budget = memory_budget() if budget is None else budget
    model = model_bytes(model_folder)
    for stage in config.stages:
        needs = stage_memory(stage)
        if model + sum(needs.values()) > budget:
            raise ConfigError(
                f"stage '{stage.name}' needs about {_gb(model + sum(needs.values()))} (model {_gb(model)}, "
                f"parameters and optimizer state {_gb(needs['parameters'])}, one training render "
                f"{_gb(needs['render'])}), more than the {_gb(budget)} memory budget: lower camera.resolution, "
                "camera.batch_size or renderer.n_samples (the render) or nerf.hash_grid.log2_hashmap_size "
                "(the parameters), or raise --memory-budget"
            )
    volume = 4 * 4 * config.export.isosurface_resolution**3  # density grid, blurred copy, marching cubes
    if volume > budget:
        raise ConfigError(
            f"export.isosurface_resolution={config.export.isosurface_resolution} needs about {_gb(volume)}, more "
            f"than the {_gb(budget)} memory budget: lower export.isosurface_resolution or raise --memory-budget"
        )
    return budget


def _gb(size: int) -> str:
    return f"{size / 2**30:.1f} GB"
