"""What an edit (``dreamsmith edit``) runs: its source's kind and a run config of one stage that starts as it.

Everything here is checked without torch, before any model loads: a usage error answers at once.
A run directory's edit copies the run's last stage (its representation, renderer, cameras, shading,
losses) with the edit's guidance in place of the run's; a mesh file's edit is the texture stage of a
preset (``toy-texture`` by default) on that mesh.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dreamsmith.engine.config import RunConfig, apply_overrides
from dreamsmith.engine.overrides import validated
from dreamsmith.engine.presets import default_model, load_preset
from dreamsmith.engine.run_dir import RunDir
from dreamsmith.errors import ConfigError, DreamsmithError, RunDirError
from dreamsmith.prompt_words import check_reweight, parse_reweight

EDIT_METHODS = ("ip2p", "in2n", "p2p")
"""Edit methods, each a guidance (``guidance.name``): ip2p's and in2n's model reads the source's render; p2p's is a
text-to-image model (by default the one the source's stage used) whose source prompt lends its cross-attention."""
IMAGE_METHODS = ("ip2p", "in2n")
"""The edit methods whose model reads the source's render (InstructPix2Pix-style)."""
KEEP = ("geometry", "none")
DEFAULT_EDIT_MODEL = "embedded:toyworld-ip2p"
SourceKind = Literal["run", "mesh"]


@dataclass(frozen=True)
class EditRequest:
    """What the user asked for (the command line's arguments; None: the default)."""

    source: Path
    instruction: str
    method: str = "ip2p"
    image_guidance: float | None = None
    text_guidance: float | None = None
    keep: str | None = None
    model: str | None = None
    steps: int | None = None
    seed: int | None = None
    device: str | None = None
    preset: str = "toy-texture"
    overrides: tuple[str, ...] = ()
    allow_pickle: bool = False
    source_prompt: str | None = None
    reweight: tuple[str, ...] = ()


def source_kind(path: Path) -> SourceKind:
    """The kind of a SOURCE: "run" (a finished run directory) or "mesh" (a file); else a one-line error."""
    if path.is_dir():
        run = RunDir(path)
        run.load_config()  # "not a dreamsmith run directory"
        if not run.report.is_file():
            raise RunDirError(
                f"the run in {path} has not finished (it has no report.json); finish it with "
                f"`dreamsmith generate ... --resume --out {path}`, then edit it"
            )
        return "run"
    if path.is_file():
        return "mesh"
    raise DreamsmithError(f"{path} does not exist; SOURCE is a finished run directory or a .glb/.obj mesh file")


def check_mesh_source(path: Path, max_faces: int) -> None:
    """The mesh reads and has colours to edit (a texture with UVs, or vertex colours)."""
    from dreamsmith.engine.mesh_input import read_user_mesh

    mesh = read_user_mesh(path, max_faces).mesh
    if mesh.vertex_colors is None and mesh.base_color_texture is None:
        raise DreamsmithError(
            f"{path} has neither a texture nor vertex colours: nothing to edit; paint it first "
            f'with `dreamsmith texture {path} "PROMPT"`'
        )


def edit_config(request: EditRequest) -> tuple[RunConfig, SourceKind]:
    """The edit's run config and its source's kind; one-line errors for anything wrong, before torch loads."""
    if not request.instruction.strip():
        raise ConfigError('the instruction is empty; say what to change, e.g. "make it blue"')
    if request.method not in EDIT_METHODS:
        raise ConfigError(f"unknown --method '{request.method}'; choose one of {', '.join(EDIT_METHODS)}")
    if request.keep is not None and request.keep not in KEEP:
        raise ConfigError(f"unknown --keep '{request.keep}'; choose geometry or none")
    if request.steps is not None and request.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {request.steps}")
    kind = source_kind(request.source)
    if kind == "run":
        base = RunDir(request.source).load_config()
        stage = copy.deepcopy(base["stages"][-1])
        keep = request.keep or "none"
    else:
        if request.keep == "none":
            raise ConfigError(
                "a mesh SOURCE keeps its geometry (the edit paints its texture); --keep none needs a run directory"
            )
        base = load_preset(request.preset)
        stage = _texture_stage(base, request.preset)
        stage.setdefault("uv_texture", {})["mesh"] = str(request.source.resolve())
        keep = "geometry"
    guidance = _guidance(request, base.get("prompt") if kind == "run" else None)
    own_model = stage.get("model") or base.get("model") or default_model(base.get("preset", request.preset))
    stage.update(name="edit", model=None, guidance=guidance)
    if request.steps is not None:
        stage["steps"] = request.steps
    if keep == "geometry" and stage.get("representation", "nerf") in ("nerf", "dmtet"):
        section = stage.get("representation", "nerf")
        stage.setdefault(section, {})["optimize_geometry"] = False
    raw = {
        "prompt": request.instruction,
        "preset": base.get("preset", request.preset),
        "model": request.model or (DEFAULT_EDIT_MODEL if request.method in IMAGE_METHODS else own_model),
        "seed": base.get("seed", 0) if request.seed is None else request.seed,
        "device": request.device or "auto",
        "allow_pickle": request.allow_pickle,
        "stages": [stage],
        "export": base.get("export", {}),
    }
    raw = apply_overrides(raw, list(request.overrides))
    if kind == "mesh":
        check_mesh_source(request.source, int(raw["stages"][0].get("uv_texture", {}).get("max_faces", _max_faces())))
    return validated(raw, models_first=True), kind


def _guidance(request: EditRequest, source_prompt: str | None) -> dict[str, Any]:
    """The edit stage's guidance section: ip2p's (and in2n's) two scales, or p2p's source prompt, re-weighted words
    and scale."""
    guidance: dict[str, Any] = {"name": request.method}
    if request.text_guidance is not None:
        guidance["guidance_scale"] = request.text_guidance
    if request.method in IMAGE_METHODS:
        for option, given in (("--source-prompt", request.source_prompt), ("--reweight", request.reweight)):
            if given:
                raise ConfigError(f"{option} is for --method p2p; {request.method} edits by an instruction and the "
                                  "source's look")
        if request.image_guidance is not None:
            guidance["image_guidance_scale"] = request.image_guidance
        return guidance
    if request.image_guidance is not None:
        raise ConfigError("--image-guidance is for --method ip2p or in2n; p2p has no image condition")
    guidance["source_prompt"] = request.source_prompt or source_prompt or ""
    if not guidance["source_prompt"].strip():
        raise ConfigError("--method p2p on a mesh needs --source-prompt: the prompt that describes it as it is")
    weights = dict(parse_reweight(text) for text in request.reweight)
    check_reweight(request.instruction, weights)
    if weights:
        guidance["reweight"] = weights
    return guidance


def check_out(out: Path, source: Path) -> None:
    """The edit never writes into its source: ``out`` may not be the source run directory or inside it."""
    out, source = out.resolve(), source.resolve()
    if source.is_dir() and (out == source or source in out.parents):
        raise RunDirError(
            f"--out {out} is inside the source run {source}; the source is never modified: choose another --out"
        )


def _texture_stage(preset: dict[str, Any], name: str) -> dict[str, Any]:
    stages = [stage for stage in preset["stages"] if stage.get("representation") == "texture"]
    if not stages:
        raise ConfigError(
            f"preset '{name}' has no texture stage to paint a mesh SOURCE with; choose one that has (e.g. toy-texture)"
        )
    return copy.deepcopy(stages[0])


def _max_faces() -> int:
    from dreamsmith.representations.configs import TextureConfig

    return TextureConfig().max_faces
