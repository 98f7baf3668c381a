"""Which backend each part of the pipeline uses here, and why (``dreamsmith doctor``)."""

from __future__ import annotations

import importlib
import platform

import torch

from dreamsmith.representations.hashgrid import tcnn_available


def _importable(module: str) -> tuple[bool, str]:
    try:
        imported = importlib.import_module(module)
    except Exception as error:  # compiled extensions fail in many ways; report, never raise
        return False, f"{module} not importable ({type(error).__name__})"
    return True, f"{module} {getattr(imported, '__version__', '')}".strip()


def backend_report() -> list[tuple[str, str, str]]:
    """Rows of (part, backend used, why)."""
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "none"
    rows = [
        ("python", platform.python_version(), platform.platform()),
        ("torch", torch.__version__, f"CUDA device: {device}"),
        ("device", "cuda" if cuda else "cpu", "--device auto picks CUDA when available"),
    ]
    use_tcnn, why = tcnn_available()
    rows.append(("hash-grid encoding", "tiny-cuda-nn" if use_tcnn else "PyTorch hash grid (fused gathers)", why))
    ok, why = _importable("nerfacc")
    sampler = ("nerfacc occupancy grid" if cuda and ok else
               "dense samples, PyTorch occupancy grid skips empty space" if ok else "unavailable")
    rows.append(("volume rendering", sampler, why if not cuda else f"{why}; CUDA present"))
    ok_nv, why_nv = _importable("nvdiffrast.torch") if cuda else (False, "no CUDA device")
    ok_o3d, why_o3d = _importable("open3d")
    raster = "nvdiffrast" if ok_nv else "Open3D ray casting + PyTorch barycentrics" if ok_o3d else "unavailable"
    rows.append(("mesh rasterization", raster, why_nv if ok_nv else why_o3d))
    ok_kaolin, why_kaolin = _importable("kaolin")
    rows.append(("marching tetrahedra", "kaolin" if ok_kaolin else "PyTorch", why_kaolin))
    rows.append(("marching cubes", "scikit-image", _importable("skimage")[1]))
    ok_diff, why_diff = _importable("diffusers")
    rows.append(("diffusion model", "diffusers fp16 on CUDA" if cuda else "diffusers fp32 on CPU", why_diff))
    from dreamsmith.tryon.garments import MODEL_LICENCES, TRYON_MODELS

    licences = ", ".join(f"{kind} {licence}" for kind, licence in MODEL_LICENCES.items())
    rows.append(("try-on models (tryon)", "decal (embedded); " + ", ".join(TRYON_MODELS[1:]),
                 f"non-commercial licences ({licences}): research use only; weights never shipped, bring your own"))
    return rows
