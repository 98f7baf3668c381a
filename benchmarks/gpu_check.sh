#!/usr/bin/env bash
# dreamsmith's CUDA paths and step-overhead benchmark on a machine with an NVIDIA GPU, in one short run
# (target < 8 minutes): nvidia-smi, a venv with CUDA torch and the project, optional tiny-cuda-nn /
# nvdiffrast (only from wheels), `dreamsmith doctor`, the hash grid (tcnn and torch), nerfacc's
# occupancy-grid sampler (render + backward), the fp16 prior, then benchmarks/step_overhead.py with a
# Stable-Diffusion-2.1-sized random UNet on CUDA (64² renders: step time, model-call ratio, peak GPU
# memory), benchmarks/memory_phases.py on CUDA (peak GPU memory per phase, tiny model) and the tiny
# model's step on CPU for reference: the figures benchmarks/README.md lists for the CPU.
#
# Through the device tool (a fresh machine without network), from the repo root:
#   here, once:  echo /wheels/ >> .git/info/exclude && bash benchmarks/gpu_check.sh --prepare-wheels
#   then:        run(command="bash benchmarks/gpu_check.sh", timeout_s=540, carry=["wheels"])
# --prepare-wheels downloads (PyPI) the pure-Python packages the device image lacks into wheels/; put
# tinycudann-*.whl / nvdiffrast-*.whl there too to check them. Without wheels/ it tries PyPI.
# Output: JSON lines {"check": NAME, "status": "ok"|"FAIL"|"SKIP", ...} on stdout, repeated at the end;
# logs on stderr. With $OUT set, also $OUT/gpu_check.jsonl and $OUT/gpu_check.log.
# Env: PYTHON (base interpreter, default python3), VENV (default /tmp/dreamsmith-venv), WHEELS (wheels),
# BUDGET_S (default 480: later steps shrink their timeouts or SKIP to finish within it).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
WHEELS=${WHEELS:-wheels}
# What the device image lacks of dreamsmith's runtime dependencies (the rest comes with the image).
RUNTIME_WHEELS=(diffusers importlib_metadata lazy-importer zipp nerfacc trimesh)

if [ "${1:-}" = "--prepare-wheels" ]; then
  mkdir -p "$WHEELS"
  specs=()
  for name in "${RUNTIME_WHEELS[@]}"; do
    version=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)
    specs+=("$name${version:+==$version}")
  done
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${specs[@]}"
fi

START=$SECONDS
BUDGET_S=${BUDGET_S:-480}
RESULTS=${OUT:+$OUT/gpu_check.jsonl}  # under $OUT, what ran comes back even if the run is cut short
RESULTS=${RESULTS:-$(mktemp)}
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-$(mktemp)}
: >"$RESULTS"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

json_string() {
  local text=${1//\\/\\\\}
  text=${text//\"/\\\"}
  text=${text//$'\n'/ }
  text=${text//$'\t'/ }
  printf '"%s"' "$text"
}

emit() {  # emit JSON_LINE: to stdout and the results file
  printf '%s\n' "$1" | tee -a "$RESULTS"
}

status_line() {  # status_line CHECK STATUS SECONDS [DETAIL]
  local line="{\"check\": $(json_string "$1"), \"status\": \"$2\", \"seconds\": $3"
  [ $# -ge 4 ] && line+=", \"detail\": $(json_string "$4")"
  emit "$line}"
}

log() { printf '[gpu_check %4ss] %s\n' "$((SECONDS - START))" "$*" | tee -a "$LOG" >&2; }

limit() {  # limit SECONDS: that, or what is left of the budget (0: no time left)
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 20 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

limited() {  # limited SECONDS CMD...: CMD under a timeout of SECONDS, or of what is left of the budget
  local seconds
  seconds=$(limit "$1")
  shift
  [ "$seconds" = 0 ] && { log "out of the ${BUDGET_S}s budget: not running $1"; return 124; }
  timeout "$seconds" "$@"
}

# --- the GPU -----------------------------------------------------------------------------------
log "nvidia-smi"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi 2>&1 | tee -a "$LOG" >&2
  status_line nvidia_smi ok 0 "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1)"
else
  status_line nvidia_smi SKIP 0 "nvidia-smi not found: no NVIDIA driver here; CUDA checks will be skipped"
fi
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"  # nvcc for nerfacc's JIT build

# --- Python: a venv that sees the base interpreter's packages (the image's CUDA torch) --------------
t=$SECONDS
BASE=${PYTHON:-python3}
VENV=${VENV:-/tmp/dreamsmith-venv}
PY=$VENV/bin/python
if [ ! -x "$PY" ] && ! "$BASE" -m venv "$VENV" >>"$LOG" 2>&1; then
  log "venv creation failed; using $BASE itself"
  PY=$(command -v "$BASE")
fi
if [ "$PY" = "$VENV/bin/python" ]; then
  # A venv made from a venv's python does not see the outer venv's packages: a .pth adds them.
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  "$BASE" -c "import site; print('\n'.join(site.getsitepackages()))" >"$site/base_packages.pth"
fi
pip_install() {  # from wheels/ when present, else PyPI (fails fast offline)
  if [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@" >>"$LOG" 2>&1
  else
    "$PY" -m pip install -q --timeout 10 --retries 0 "$@" >>"$LOG" 2>&1
  fi
}
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
  torch_detail="torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)') (already there)"
elif command -v nvidia-smi >/dev/null && pip_install torch; then
  torch_detail="torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)') (installed)"
else
  torch_detail="no CUDA torch: $("$PY" -c 'import torch; print(torch.__version__)' 2>&1 | tail -n 1)"
fi
missing=$("$PY" - <<'PYEOF' 2>>"$LOG"
import importlib.util
modules = {"diffusers": "diffusers", "importlib_metadata": "importlib_metadata", "nerfacc": "nerfacc",
           "trimesh": "trimesh", "transformers": "transformers", "safetensors": "safetensors",
           "skimage": "scikit-image", "typer": "typer", "rich": "rich", "imageio": "imageio", "yaml": "pyyaml"}
print(" ".join(package for module, package in modules.items() if importlib.util.find_spec(module) is None))
PYEOF
)
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  # --no-deps: the image's own versions of everything else stay
  runtime=()
  for name in "${RUNTIME_WHEELS[@]}"; do
    runtime+=("$(ls "$WHEELS"/"${name//-/_}"-*.whl 2>/dev/null | head -n 1)")
  done
  pip_install --no-deps $(printf '%s ' "${runtime[@]}") || log "pip install from $WHEELS failed (see log)"
elif [ -n "$missing" ]; then
  pip_install $missing || log "pip install $missing failed (offline?)"
fi
project="editable install"
pip_install --no-deps --no-build-isolation -e "$ROOT" || project="PYTHONPATH (editable install failed, see log)"
still=$("$PY" - <<'PYEOF' 2>>"$LOG"
import importlib
import traceback

missing = []
for module in ("torch", "diffusers", "transformers", "nerfacc", "trimesh", "skimage", "dreamsmith.engine.stage"):
    try:
        importlib.import_module(module)
    except Exception as error:  # a version clash shows up here, not in find_spec
        traceback.print_exc()
        missing.append(f"{module} ({type(error).__name__}: {error})")
print("; ".join(missing))
PYEOF
)
if [ -z "$still" ]; then
  status_line python_env ok $((SECONDS - t)) "$PY; $torch_detail; project: $project"
else
  status_line python_env FAIL $((SECONDS - t)) "$PY; $torch_detail; project: $project; missing: $still"
fi
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$CUDA" = 1 ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST MAX_JOBS=${MAX_JOBS:-$(nproc)}  # nerfacc's JIT build: this GPU only
fi

# --- optional CUDA extensions: only from wheels --------------------------------------------------
for package in tinycudann nvdiffrast; do
  t=$SECONDS
  wheel=$(ls "$WHEELS"/"$package"-*.whl 2>/dev/null | head -n 1)
  if [ -z "$wheel" ]; then
    status_line "install_$package" SKIP 0 "no $WHEELS/$package-*.whl (it builds from source against CUDA; bring a wheel)"
  elif pip_install --no-deps "$wheel"; then
    status_line "install_$package" ok $((SECONDS - t)) "$(basename "$wheel")"
  else
    status_line "install_$package" FAIL $((SECONDS - t)) "pip install $(basename "$wheel") failed (see log)"
  fi
done

# --- dreamsmith doctor ---------------------------------------------------------------------------
t=$SECONDS
log "dreamsmith doctor"
if [ -x "$VENV/bin/dreamsmith" ]; then doctor=("$VENV/bin/dreamsmith" doctor)
else doctor=("$PY" -c "from dreamsmith.cli import main; main()" doctor); fi
if COLUMNS=200 timeout 120 "${doctor[@]}" 2>&1 | tee -a "$LOG" >&2 && [ "${PIPESTATUS[0]}" = 0 ]; then
  rows=$("$PY" -c "import json; from dreamsmith.engine.backends import backend_report as r; print(json.dumps(r()))")
  emit "{\"check\": \"doctor\", \"status\": \"ok\", \"seconds\": $((SECONDS - t)), \"rows\": ${rows:-null}}"
else
  status_line doctor FAIL $((SECONDS - t)) "$(tail -n 3 "$LOG")"
fi

# --- nerfacc's CUDA extension (JIT-compiled on first use; minutes on a fresh machine) -------------
t=$SECONDS
NERFACC_CUDA=0
if [ "$CUDA" = 1 ]; then
  log "building nerfacc's CUDA extension"
  if limited 240 "$PY" -c "
from nerfacc.cuda import _backend
assert _backend._C is not None, 'nerfacc built no CUDA extension (nvcc missing?)'" >>"$LOG" 2>&1; then
    status_line nerfacc_cuda_build ok $((SECONDS - t))
    NERFACC_CUDA=1
  else
    status_line nerfacc_cuda_build FAIL $((SECONDS - t)) "$(tail -n 5 "$LOG")"
  fi
else
  status_line nerfacc_cuda_build SKIP 0 "no CUDA device"
fi

# --- hash grid, occupancy-grid sampler, fp16 prior -----------------------------------------------
log "python checks"
export NERFACC_CUDA
limited 150 "$PY" - 2>>"$LOG" <<'PYEOF' | tee -a "$RESULTS"
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def emit(check, status, seconds, **fields):
    print(json.dumps({"check": check, "status": status, "seconds": round(seconds, 3), **fields}), flush=True)


def run(check, function):
    start = time.perf_counter()
    try:
        fields = function()
        emit(check, fields.pop("status", "ok"), time.perf_counter() - start, **fields)
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        emit(check, "FAIL", time.perf_counter() - start, error=f"{type(error).__name__}: {error}"[:800])


def finite(tensor):
    return bool(torch.isfinite(tensor).all())


def grad_norm(parameters):
    grads = [p.grad.float().square().sum() for p in parameters if p.grad is not None]
    return math.sqrt(float(sum(grads))) if grads else 0.0


def hash_grid():
    from dreamsmith.representations.hashgrid import HashGrid, HashGridConfig, tcnn_available

    positions = torch.rand(1 << 16, 3, device=device, generator=torch.Generator(device).manual_seed(0))
    results, ok = {}, True
    # the fused PyTorch path (no per-corner tensors) against the reference path, on this device
    grid = HashGrid(HashGridConfig(), device=device, backend="torch").to(device)
    with torch.no_grad():
        for parameter in grid.parameters():
            parameter.uniform_(-1, 1)
    outputs = {}
    for fused in (True, False):
        grid.grid.fused = fused
        grid.zero_grad(set_to_none=True)
        features = grid(positions)
        features.square().sum().backward()
        outputs[fused] = (features.detach(), torch.cat([p.grad.flatten() for p in grid.parameters()]))
    results["fused_max_abs_diff"] = float((outputs[True][0] - outputs[False][0]).abs().max())
    results["fused_grad_max_rel_diff"] = float((outputs[True][1] - outputs[False][1]).abs().max()
                                               / outputs[False][1].abs().max())
    ok = results["fused_max_abs_diff"] < 1e-4 and results["fused_grad_max_rel_diff"] < 1e-3
    usable, why = tcnn_available()
    for backend in ("torch", "tcnn"):
        if backend == "tcnn" and not usable:
            results[backend] = f"SKIP: {why}"
            continue
        grid = HashGrid(HashGridConfig(), device=device, backend=backend).to(device)
        features = grid(positions)
        features.sum().backward()
        results[backend] = {"shape": list(features.shape), "finite": finite(features),
                            "grad_norm": grad_norm(grid.parameters())}
        ok = ok and finite(features) and results[backend]["grad_norm"] > 0
    if isinstance(results["tcnn"], dict):
        results["same_shape"] = results["tcnn"]["shape"] == results["torch"]["shape"]
        ok = ok and results["same_shape"]
    return {"status": "ok" if ok else "FAIL", "device": str(device), **results}


def occupancy_grid():
    if device.type != "cuda":
        return {"status": "SKIP", "reason": "no CUDA device: the occupancy-grid sampler is CUDA-only"}
    if os.environ.get("NERFACC_CUDA") != "1":  # importing it again would start another long JIT build
        return {"status": "FAIL", "reason": "nerfacc's CUDA extension did not build (see nerfacc_cuda_build)"}
    from dreamsmith.engine.camera_sampling import CameraConfig, sample_cameras
    from dreamsmith.renderers.volume import VolumeRenderer, VolumeRendererConfig
    from dreamsmith.representations.background import Background, BackgroundConfig
    from dreamsmith.representations.nerf import NeRFConfig, NeRFField

    field = NeRFField(NeRFConfig(), device=device).to(device)
    background = Background(BackgroundConfig()).to(device)
    renderer = VolumeRenderer(VolumeRendererConfig(sampler="occupancy_grid"), bound=1.0, device=device).to(device)
    dense = VolumeRenderer(VolumeRendererConfig(sampler="dense"), bound=1.0, device=device).to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    renderer.update_occupancy(field, 0)
    cameras = sample_cameras(CameraConfig(batch_size=2, resolution=64), generator).to(device)
    render = renderer(field, background, cameras, shading="lambertian", generator=generator, need_normals=True)
    (render.rgb.mean() + render.opacity.mean()).backward()
    norm = grad_norm(field.parameters())
    with torch.no_grad():
        reference = dense(field, background, cameras, shading="lambertian", need_normals=True)
    ok = finite(render.rgb) and finite(render.opacity) and norm > 0 and math.isfinite(norm)
    return {"status": "ok" if ok else "FAIL", "sampler": renderer.sampler, "rgb": list(render.rgb.shape),
            "occupied_fraction": float(renderer.estimator.binaries.float().mean()), "grad_norm": norm,
            "opacity_mean": float(render.opacity.mean()), "opacity_mean_dense": float(reference.opacity.mean())}


def fp16_prior():
    sys.path.insert(0, "tests")
    from conftest import build_tiny_sd

    from dreamsmith.guidance.loading import load_prior

    with tempfile.TemporaryDirectory() as folder:
        prior = load_prior(build_tiny_sd(Path(folder) / "tiny-sd"), device=device)
    expected = torch.float16 if device.type == "cuda" else torch.float32
    embeds = prior.encode_prompts(["a red cube", ""])
    size = prior.unet.config.sample_size
    z_t = torch.randn(2, prior.latent_channels, size, size, device=device)
    eps = prior.predict_noise(z_t, torch.tensor([500, 500]), embeds)
    rgb = torch.rand(1, 64, 64, 3, device=device, requires_grad=True)
    z = prior.encode_images(rgb, torch.Generator(device=device).manual_seed(0))
    z.float().square().mean().backward()
    ok = prior.dtype == expected and prior.unet.dtype == expected and finite(eps) and finite(rgb.grad)
    return {"status": "ok" if ok else "FAIL", "dtype": str(prior.dtype), "unet_dtype": str(prior.unet.dtype),
            "eps_dtype": str(eps.dtype), "eps_finite": finite(eps), "vae_grad_finite": finite(rgb.grad)}


def nvdiffrast_rasterizer():
    """The CUDA rasterizer against the CPU one on the same mesh and cameras: same triangles, depth,
    and gradients reaching the vertices through antialiased opacity."""
    from dreamsmith.renderers import raster_cuda
    from dreamsmith.renderers.cameras import orbit_cameras
    from dreamsmith.renderers.mesh_renderer import MeshRenderer, MeshRendererConfig
    from dreamsmith.renderers.rasterizer import rasterize

    if device.type != "cuda" or not raster_cuda.is_available():
        return {"status": "SKIP", "reason": "no CUDA device or nvdiffrast not importable"}
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.4)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces, dtype=torch.int64)
    cameras = orbit_cameras(4, 20.0, 2.0, 40.0, 128)
    cpu = rasterize(vertices, faces, cameras, backend="open3d")
    gpu = rasterize(vertices.to(device), faces.to(device), cameras.to(device), backend="nvdiffrast")
    same_ids = float((cpu.triangle_id == gpu.triangle_id.cpu()).float().mean())
    both = (cpu.triangle_id >= 0) & (gpu.triangle_id.cpu() >= 0)
    depth_error = float((cpu.depth[both] - gpu.depth.cpu()[both]).abs().max()) if both.any() else float("nan")
    moving = vertices.to(device).requires_grad_(True)
    out = MeshRenderer(MeshRendererConfig(backend="nvdiffrast"))(moving, faces.to(device), cameras.to(device))
    out.opacity.sum().backward()
    norm = float(moving.grad.norm())
    ok = same_ids > 0.99 and depth_error < 1e-3 and norm > 0 and math.isfinite(norm)
    return {"status": "ok" if ok else "FAIL", "same_triangle_fraction": same_ids, "max_depth_error": depth_error,
            "opacity_grad_norm": norm}


run("hash_grid", hash_grid)
run("occupancy_grid_sampler", occupancy_grid)
run("fp16_prior", fp16_prior)
run("nvdiffrast_rasterizer", nvdiffrast_rasterizer)
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || status_line python_checks FAIL 0 "the check script itself failed or timed out (see log)"

# --- benchmarks/step_overhead.py -----------------------------------------------------------------
benchmark() {  # benchmark CHECK TIMEOUT ARGS...: the script's JSON as "result"
  local check=$1 seconds t=$SECONDS output
  seconds=$(limit "$2")
  shift 2
  if [ "$seconds" = 0 ]; then
    status_line "$check" SKIP 0 "out of the ${BUDGET_S}s budget"
    return 1
  fi
  log "step_overhead $*"
  if output=$(timeout "$seconds" "$PY" benchmarks/step_overhead.py "$@" 2>>"$LOG") && [ -n "$output" ]; then
    emit "{\"check\": \"$check\", \"status\": \"ok\", \"seconds\": $((SECONDS - t)), \"result\": $(printf '%s' "$output" | tail -n 1)}"
  else
    status_line "$check" FAIL $((SECONDS - t)) "step_overhead.py $* failed or timed out after ${seconds}s (see log)"
    return 1
  fi
}
if [ "$CUDA" = 1 ]; then
  # without nerfacc's CUDA extension the occupancy grid cannot run; the dense sampler still can
  sampler=renderer.sampler=auto
  [ "$NERFACC_CUDA" = 1 ] || sampler=renderer.sampler=dense
  benchmark step_overhead_cuda_sd21 150 --device cuda --unet sd21 --resolution 64 --steps 10 "$sampler"
  benchmark step_overhead_cuda_tiny 60 --device cuda --resolution 64 --steps 10 "$sampler"
else
  status_line step_overhead_cuda_sd21 SKIP 0 "no CUDA device"
fi
benchmark step_overhead_cpu_tiny 120 --device cpu --resolution 64 --quick

# --- benchmarks/memory_phases.py: peak GPU memory per phase (dreamfusion, tiny model) ----------------
t=$SECONDS
seconds=$(limit 120)
if [ "$CUDA" != 1 ]; then
  status_line memory_phases_cuda SKIP 0 "no CUDA device"
elif [ "$seconds" = 0 ]; then
  status_line memory_phases_cuda SKIP 0 "out of the ${BUDGET_S}s budget"
elif output=$(timeout "$seconds" "$PY" benchmarks/memory_phases.py --preset dreamfusion --steps 3 --device cuda \
              2>>"$LOG") && [ -n "$output" ]; then
  emit "{\"check\": \"memory_phases_cuda\", \"status\": \"ok\", \"seconds\": $((SECONDS - t)), \"result\": $(printf '%s' "$output" | tail -n 1)}"
else
  status_line memory_phases_cuda FAIL $((SECONDS - t)) "memory_phases.py failed or timed out after ${seconds}s (see log)"
fi

# --- summary: every JSON line again, so the last screen of output holds them all --------------------
log "done in $((SECONDS - START)) s"
echo "--- gpu_check results ($((SECONDS - START)) s) ---"
cat "$RESULTS"
exit 0
