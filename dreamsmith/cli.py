"""The ``dreamsmith`` command."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from dreamsmith.errors import DreamsmithError
from dreamsmith.regions import parse_region
from dreamsmith.self_guidance_terms import check_self_guidance_words, parse_self_guidance

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Text to game-ready 3D assets by score distillation.")
console = Console(stderr=True)


class RichProgress:
    """Shows stage, step, loss, speed and ETA."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4g}"),
            TextColumn("{task.fields[speed]:.2f} it/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = None

    def stage_started(self, name: str, start: int, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task(name, total=total, completed=start, loss=float("nan"), speed=0.0)

    def step(self, step: int, loss: float, logs: dict[str, float]) -> None:
        task = self.bar.tasks[-1]
        self.bar.update(self.task, completed=step, loss=loss, speed=task.speed or 0.0)

    def stage_finished(self, name: str) -> None:
        self.bar.stop()

    def message(self, text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def _error_line(error: object) -> None:
    """One ``error: ...`` line; user text inside (prompts, paths, keys) is never read as markup."""
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)


THREADS_HELP = "CPU threads for torch (default: the cores idle when the command starts)."
MEMORY_HELP = ("Memory the run may use, e.g. 4G (default: half the memory available); configs that cannot fit "
               "are refused, batched evaluations are chunked to fit.")

# Options that several commands take, with the same help.
ModelOption = Annotated[str | None, typer.Option(help="Diffusion model: a local diffusers folder or a Hugging Face id.")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu or cuda.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out (refused otherwise).")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
AllowPickleOption = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickled (.bin/.ckpt) model weights; only for models you trust.")]
ThreadsOption = Annotated[int | None, typer.Option(help=THREADS_HELP)]
MemoryBudgetOption = Annotated[str | None, typer.Option(help=MEMORY_HELP)]
RegionOption = Annotated[list[str] | None, typer.Option("--region", help="\"EXPRESSION: PROMPT\" (repeatable): a prompt painted where the asset's surface lies in a 3D region: y>0, x<-0.1, box(x0,y0,z0,x1,y1,z1), joined by &; sets guidance.conditioners.")]
RegionBaseRatioOption = Annotated[float, typer.Option(help="How much of the main prompt is kept inside the --region regions (0 to 1).")]
SelfGuidanceOption = Annotated[list[str] | None, typer.Option("--self-guidance", help="\"WORD:KIND=VALUE\" or \"WORD:KIND=VALUE@WEIGHT\" (repeatable): steer a prompt word's cross-attention map in every view: centroid=X,Y, size=S, shape=box(X0,Y0,X1,Y1) or shape=disk(X,Y,R), fractions of the view from its top left; sets guidance.conditioners.")]
SelfGuidanceWeightOption = Annotated[float, typer.Option(help="Strength v of all --self-guidance terms (eps += v sigma_t grad g).")]
ImageOption = Annotated[Path | None, typer.Option("--image", help="A reference image (PNG/JPEG) the asset should look like (IP-Adapter image prompt); PROMPT becomes optional.")]
ImageScaleOption = Annotated[float, typer.Option(help="Weight of the --image prompt's attention (0: ignored).")]
IPAdapterOption = Annotated[str | None, typer.Option("--ip-adapter", help="The IP-Adapter for --image: a published checkpoint (ip-adapter_sd15.safetensors, its image_encoder/ beside it) or a folder; default: the embedded model's own.")]
SubjectOption = Annotated[list[str] | None, typer.Option("--subject", help="\"EXPRESSION: IMAGE[=PHRASE]\" (repeatable): a subject image confined to a 3D box of the asset, e.g. \"box(-0.5,0,-0.5,0,0.5,0.5): dog.png=a dog\" (MS-Diffusion's multi-subject layout; needs --ms-adapter).")]
SubjectScaleOption = Annotated[float, typer.Option(help="Weight of the --subject images' attention (0: ignored).")]
MSAdapterOption = Annotated[str | None, typer.Option("--ms-adapter", help="The MS-Diffusion checkpoint for --subject (ms_adapter.bin with --allow-pickle, or .safetensors; its image_encoder/ beside it) or its folder.")]
InstantIDOption = Annotated[str | None, typer.Option("--instantid", help="InstantID identity: InstantX/InstantID's ip-adapter.bin (ControlNetModel/ beside it) or their folder; needs --face-embedding.")]
FaceEmbeddingOption = Annotated[Path | None, typer.Option("--face-embedding", help="The face's 512-wide ArcFace embedding (.npy or .safetensors) for --instantid.")]
IDScaleOption = Annotated[float, typer.Option(help="Weight of --instantid's ID tokens and IdentityNet (0: ignored).")]
PhotoMakerOption = Annotated[Path | None, typer.Option("--photomaker", help="PhotoMaker identity: photomaker-v1.bin; the prompt names the person as CLASS img (\"a photo of a man img\").")]
IDImageOption = Annotated[list[Path] | None, typer.Option("--id-image", help="A photo of the person for --photomaker (repeatable).")]
StyleReferenceOption = Annotated[Path | None, typer.Option("--style-reference", help="An image, or a finished run directory, whose style every self-attention shares (StyleAligned).")]
AdapterOption = Annotated[list[Path] | None, typer.Option("--adapter", help="A personalization adapter folder (from `dreamsmith personalize`, or diffusers-layout learned_embeds/LoRA files); repeatable, each a named adapter; sets guidance.conditioners.")]
AdapterScaleOption = Annotated[float, typer.Option(help="Strength of the --adapter LoRAs (0: the base model; their tokens stay defined).")]
AdapterRewardOption = Annotated[float, typer.Option(help="DCO's reward guidance w for the --adapter LoRAs: adds w(eps_adapter - eps_base) to the guided prediction (0: off).")]


def _machine_settings(threads: int | None, memory_budget: str | None) -> None:
    """Check --threads and apply --memory-budget (the config check reads it) before anything loads."""
    from dreamsmith.engine.memory import ENV, parse_memory_size

    if threads is not None and threads < 1:
        raise DreamsmithError(f"--threads must be >= 1, got {threads}")
    if memory_budget is not None:
        os.environ[ENV] = str(parse_memory_size(memory_budget))


def _fail(error: Exception) -> None:
    _error_line(error)
    raise typer.Exit(1)


def _interrupted(error: KeyboardInterrupt, out: Path) -> None:
    """What a stopped run left, and the exit code a shell expects (130 for Ctrl-C, 143 for SIGTERM)."""
    _ignore_further_stops()
    step = getattr(error, "checkpoint_step", None)
    has_checkpoint = step is not None or (out / "checkpoints" / "last.pt").exists()
    message = (f"interrupted; the checkpoint in {out} is kept: continue with --resume" if has_checkpoint
               else "interrupted before anything was written")
    console.print(message, markup=False, highlight=False)
    raise typer.Exit(getattr(error, "exit_code", 130))


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to make, e.g. \"a red cube\" (optional with --image).")] = "",
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE config overrides, e.g. guidance.guidance_scale=50.")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset (see `dreamsmith presets`); default: toy without --model, else dreamfusion.")] = None,
    model: ModelOption = None,
    steps: Annotated[int | None, typer.Option(help="Optimization steps of the whole run, split over the stages in the preset's proportions (STAGE.steps=N sets one stage).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same device: same asset).")] = None,
    device: DeviceOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<prompt>).")] = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    allow_pickle: AllowPickleOption = False,
    threads: ThreadsOption = None,
    memory_budget: MemoryBudgetOption = None,
    region: RegionOption = None,
    region_base_ratio: RegionBaseRatioOption = 0.3,
    self_guidance: SelfGuidanceOption = None,
    self_guidance_weight: SelfGuidanceWeightOption = 1.0,
    image: ImageOption = None,
    image_scale: ImageScaleOption = 1.0,
    ip_adapter: IPAdapterOption = None,
    style_reference: StyleReferenceOption = None,
    subject: SubjectOption = None,
    subject_scale: SubjectScaleOption = 0.6,
    ms_adapter: MSAdapterOption = None,
    instantid: InstantIDOption = None,
    face_embedding: FaceEmbeddingOption = None,
    id_scale: IDScaleOption = 0.8,
    photomaker: PhotoMakerOption = None,
    id_image: IDImageOption = None,
    adapter: AdapterOption = None,
    adapter_scale: AdapterScaleOption = 1.0,
    adapter_reward: AdapterRewardOption = 0.0,
) -> None:
    """Optimize a 3D asset for PROMPT (and/or --image) and write it, with previews and a report, to the run directory."""
    images = ImagePrompts(image, image_scale, ip_adapter, style_reference, tuple(subject or ()), subject_scale,
                          ms_adapter, instantid=instantid, face_embedding=face_embedding, id_scale=id_scale,
                          photomaker=photomaker, id_images=tuple(id_image or ()))
    overrides = overrides or []
    if image is not None and OVERRIDE.match(prompt):  # no prompt: the first argument is already an override
        prompt, overrides = "", [prompt, *overrides]
    _run_command(prompt, overrides, preset, model, steps, seed, device, out, resume, overwrite, quiet,
                 allow_pickle, threads, memory_budget, regions=region or [], base_ratio=region_base_ratio,
                 self_guidance=self_guidance or [], self_guidance_weight=self_guidance_weight, images=images,
                 adapters=adapter_specs(adapter or [], adapter_scale, adapter_reward))


@app.command()
def texture(
    mesh: Annotated[Path, typer.Argument(help="The mesh to paint (.glb or .obj); its geometry and UVs are kept.")],
    prompt: Annotated[str, typer.Argument(help="What it should look like, e.g. \"a red brick house\".")],
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE config override (repeatable), e.g. --set uv_texture.texture_size=512.")] = None,
    control: Annotated[list[str] | None, typer.Option("--control", help="SOURCE=CONTROLNET_DIR[:SCALE] (repeatable): a ControlNet fed with the asset's depth, normal or opacity render; SOURCE,SOURCE=UNI.safetensors[:SCALE]: a Uni-ControlNet checkpoint fed with several renders stacked; sets guidance.conditioners.")] = None,
    preset: Annotated[str, typer.Option(help="Preset with a texture stage (see `dreamsmith presets`).")] = "toy-texture",
    model: ModelOption = None,
    steps: Annotated[int | None, typer.Option(help="Optimization steps of the whole run.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (same seed, same device: same texture).")] = None,
    device: DeviceOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<prompt>).")] = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    allow_pickle: AllowPickleOption = False,
    threads: ThreadsOption = None,
    memory_budget: MemoryBudgetOption = None,
    region: RegionOption = None,
    region_base_ratio: RegionBaseRatioOption = 0.3,
    self_guidance: SelfGuidanceOption = None,
    self_guidance_weight: SelfGuidanceWeightOption = 1.0,
) -> None:
    """Paint MESH from PROMPT (fixed geometry, a UV texture): the same run directory as `generate`."""
    _run_command(prompt, [f"uv_texture.mesh={mesh.resolve()}", *(overrides or [])], preset, model, steps, seed,
                 device, out, resume, overwrite, quiet, allow_pickle, threads, memory_budget, needs_mesh=True,
                 controls=control or [], regions=region or [], base_ratio=region_base_ratio,
                 self_guidance=self_guidance or [], self_guidance_weight=self_guidance_weight)


@app.command()
def edit(
    source: Annotated[Path, typer.Argument(help="What to edit: a finished run directory, or a .glb/.obj mesh with a texture or vertex colours. It is only read.")],
    instruction: Annotated[str, typer.Argument(help="What to change, e.g. \"make it blue\".")],
    method: Annotated[str, typer.Option(help="ip2p: InstructPix2Pix score distillation, conditioned on the source's renders; in2n: Instruct-NeRF2NeRF, the asset fitted to views of the source that InstructPix2Pix edits one at a time; p2p: Prompt-to-Prompt, INSTRUCTION is the edited prompt (\"a blue cube\").")] = "ip2p",
    source_prompt: Annotated[str | None, typer.Option(help="p2p: the prompt describing the source as it is (default: the source run's prompt).")] = None,
    reweight: Annotated[list[str] | None, typer.Option("--reweight", help="p2p: WORD=WEIGHT (repeatable), scales that word's cross-attention, e.g. --reweight fluffy=2.0.")] = None,
    image_guidance: Annotated[float | None, typer.Option(help="s_I (ip2p, in2n): how closely the edit keeps to the source's renders (default 1.5).")] = None,
    text_guidance: Annotated[float | None, typer.Option(help="s_T: how strongly it follows the instruction (default 7.5).")] = None,
    keep: Annotated[str | None, typer.Option(help="geometry: train colour only; none: shape and colour (default: none for a run, geometry for a mesh).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE config override of the edit stage (repeatable).")] = None,
    preset: Annotated[str, typer.Option(help="For a mesh SOURCE: the preset whose texture stage paints it.")] = "toy-texture",
    model: Annotated[str | None, typer.Option(help="ip2p and in2n: an InstructPix2Pix-style model folder (its UNet also reads the source image), default embedded:toyworld-ip2p; p2p: default the source's model.")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimization steps (default: the source run's last stage's, or the preset's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the source run's).")] = None,
    device: DeviceOption = None,
    out: Annotated[Path | None, typer.Option(help="The edit's run directory (default: runs/<instruction>); never the source.")] = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    allow_pickle: AllowPickleOption = False,
    threads: ThreadsOption = None,
    memory_budget: MemoryBudgetOption = None,
    adapter: AdapterOption = None,
    adapter_scale: AdapterScaleOption = 1.0,
    adapter_reward: AdapterRewardOption = 0.0,
) -> None:
    """Edit an asset with words into a new run directory (generate's files, plus edit.json naming the source)."""
    from dreamsmith.engine.edit_config import EditRequest, check_out, edit_config
    from dreamsmith.engine.threads import apply_thread_policy

    out = out or Path("runs") / _slug(instruction)
    try:
        _machine_settings(threads, memory_budget)
        adapters = conditioners_override(extra=adapter_specs(adapter or [], adapter_scale, adapter_reward))
        request = EditRequest(source=source, instruction=instruction, method=method, image_guidance=image_guidance,
                              text_guidance=text_guidance, keep=keep, model=model, steps=steps, seed=seed,
                              device=device, preset=preset, overrides=(*adapters, *(overrides or [])),
                              allow_pickle=allow_pickle, source_prompt=source_prompt,
                              reweight=tuple(reweight or []))
        check_out(out, source)
        config, kind = edit_config(request)
        apply_thread_policy(threads)
        from dreamsmith.engine.edit_source import run_edit
        from dreamsmith.engine.run import Progress as SilentProgress

        report = run_edit(config, source, kind, out, resume=resume, overwrite=overwrite,
                          progress=SilentProgress() if quiet else RichProgress())
    except DreamsmithError as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        _interrupted(interrupt, out)
    if not quiet:
        _wrote(out, report)


TRYON_FILL_PROMPT = "a white capsule"
"""The fill pass's prompt with the embedded prior (it knows only its captions; the capsule is its character)."""


@app.command()
def tryon(
    mesh: Annotated[Path, typer.Argument(help="The character mesh (.glb or .obj, +Y up, metres); it is only read.")],
    garments: Annotated[list[Path], typer.Argument(help="Garment images: RGBA PNGs whose alpha is the garment, one per --region.")],
    region: Annotated[list[str] | None, typer.Option("--region", help="Where each garment goes, in order (repeatable): upper or lower (halves of the mesh's height), full, or a region expression such as 'y>0.1 & z>0' (default: upper for one garment).")] = None,
    model: Annotated[str, typer.Option(help="The texture source that dresses each view: decal (embedded: the garment laid on its region), idm-vton:DIR or ladi-vton:DIR (a model folder), stableviton:CKPT (its checkpoint, or a folder with it and its .yaml); non-commercial licences, see the README.")] = "decal",
    source_steps: Annotated[int, typer.Option(help="Denoising steps of a try-on model per batch of views.")] = 30,
    prompt: Annotated[str | None, typer.Option(help="What the fill pass paints where no view saw (default: a person wearing clothes; with the embedded prior, its capsule).")] = None,
    fill_model: Annotated[str | None, typer.Option(help="Diffusion model of the fill pass: a local diffusers folder or a Hugging Face id (default: the preset's).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE config override of the fill pass (repeatable).")] = None,
    preset: Annotated[str, typer.Option(help="Preset whose texture stage runs the fill pass.")] = "toy-texture",
    steps: Annotated[int, typer.Option(help="Steps of the fill pass.")] = 50,
    texture_size: Annotated[int, typer.Option(help="Texels along each side of the dressed texture.")] = 512,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: DeviceOption = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/tryon-<mesh name>).")] = None,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    allow_pickle: AllowPickleOption = False,
    threads: ThreadsOption = None,
    memory_budget: MemoryBudgetOption = None,
) -> None:
    """Dress MESH in GARMENT images: views dressed by a texture source, projected into its texture, the rest
    filled by guidance; the same run directory as `generate`."""
    from dreamsmith.engine.overrides import make_config
    from dreamsmith.engine.threads import apply_thread_policy
    from dreamsmith.tryon.garments import check_model, check_regions, read_garment

    out = out or Path("runs") / _slug(f"tryon {mesh.stem}")
    try:
        check_model(model)
        if source_steps < 1:
            raise DreamsmithError(f"--source-steps must be >= 1, got {source_steps}")
        choices = check_regions(list(region or []), len(garments))
        images = [read_garment(path) for path in garments]
        _machine_settings(threads, memory_budget)
        extra = ["allow_pickle=true"] if allow_pickle else []
        text = prompt or (TRYON_FILL_PROMPT if fill_model is None and preset == "toy-texture"
                          else "a person wearing clothes")
        config = make_config(text, preset, fill_model, steps, seed, device,
                             [f"uv_texture.mesh={mesh.resolve()}", f"uv_texture.texture_size={texture_size}",
                              *(overrides or []), *extra])
        _check_texture_input(config)
        apply_thread_policy(threads)
        from dreamsmith.engine.run import Progress as SilentProgress
        from dreamsmith.tryon.run import run_tryon

        report = run_tryon(config, mesh, images, choices, model, out, resume=resume, overwrite=overwrite,
                           progress=SilentProgress() if quiet else RichProgress(), source_steps=source_steps)
    except DreamsmithError as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        _interrupted(interrupt, out)
    if not quiet:
        _wrote(out, report)


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
"""A KEY=VALUE config override (what a positional argument after an optional PROMPT may be)."""


@dataclass(frozen=True)
class ImagePrompts:
    """The image-prompt options of `generate`: ``--image``/``--image-scale``/``--ip-adapter``, ``--style-reference``,
    ``--subject``/``--subject-scale``/``--ms-adapter``, ``--instantid``/``--face-embedding``/``--id-scale`` and
    ``--photomaker``/``--id-image``."""

    image: Path | None = None
    scale: float = 1.0
    adapter: str | None = None
    style_reference: Path | None = None
    subjects: tuple[str, ...] = ()
    subject_scale: float = 0.6
    ms_adapter: str | None = None
    instantid: str | None = None
    face_embedding: Path | None = None
    id_scale: float = 0.8
    photomaker: Path | None = None
    id_images: tuple[Path, ...] = ()

    def specs(self, model: str | None, prompt: str = "") -> list[dict[str, Any]]:
        """Their ``guidance.conditioners`` entries, checked without torch."""
        from dreamsmith.engine.identity_prompts import instantid_spec, photomaker_spec
        from dreamsmith.engine.image_prompts import image_prompt_spec, style_spec, subject_spec

        if self.image is None and self.adapter is not None:
            raise DreamsmithError("--ip-adapter needs --image, the reference image it reads")
        if not self.subjects and self.ms_adapter is not None:
            raise DreamsmithError("--ms-adapter needs --subject, the subject images it reads")
        if self.face_embedding is not None and self.instantid is None:
            raise DreamsmithError("--face-embedding needs --instantid, the adapter that reads it")
        if self.id_images and self.photomaker is None:
            raise DreamsmithError("--id-image needs --photomaker, the adapter that reads it")
        specs = [] if self.image is None else [image_prompt_spec(self.image, self.scale, self.adapter, model)]
        if self.subjects:
            specs.append(subject_spec(list(self.subjects), self.subject_scale, self.ms_adapter))
        if self.instantid is not None:
            specs.append(instantid_spec(self.instantid, self.face_embedding, self.id_scale, model))
        if self.photomaker is not None:
            specs.append(photomaker_spec(self.photomaker, list(self.id_images), prompt, model))
        return specs + ([] if self.style_reference is None else [style_spec(self.style_reference)])


def self_guidance_specs(prompt: str, self_guidance: list[str], weight: float) -> list[dict[str, Any]]:
    """The ``self_guidance`` conditioner entry of ``--self-guidance`` terms (none without them), checked
    without torch: every term parses and names a word of the prompt."""
    if not self_guidance:
        return []
    check_self_guidance_words(prompt, [parse_self_guidance(text) for text in self_guidance])
    if not (math.isfinite(weight) and weight >= 0):
        raise DreamsmithError(f"--self-guidance-weight must be a number >= 0, got {weight}")
    return [{"name": "self_guidance", "terms": list(self_guidance), "weight": weight}]


def conditioners_override(controls: list[str] = (), regions: list[str] = (), base_ratio: float = 0.3,
                          extra: list[dict[str, Any]] = ()) -> list[str]:
    """The ``guidance.conditioners=[...]`` override of ``--control`` and ``--region`` options and ``extra``
    entries (--self-guidance, --image, --adapter; none without them); checked here, without torch, so a typo
    is refused before any model loads."""
    specs = [*control_specs(controls), *extra]
    if regions:
        for text in regions:
            parse_region(text)
        if not 0.0 <= base_ratio <= 1.0:
            raise DreamsmithError(f"--region-base-ratio must be between 0 and 1, got {base_ratio}")
        specs.append({"name": "regions", "regions": list(regions), "base_ratio": base_ratio})
    return ["guidance.conditioners=" + json.dumps(specs)] if specs else []  # JSON is YAML: survives the parser


UNI_CONTROLNET_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
"""A --control model that is one checkpoint file is a Uni-ControlNet (a ControlNet is a diffusers folder)."""


def adapter_specs(folders: list[Path], scale: float, reward_scale: float = 0.0) -> list[dict[str, Any]]:
    """The ``guidance.conditioners`` entries of ``--adapter DIR`` options (absolute paths: a batch worker or
    a resumed run may start elsewhere); a missing folder is refused here."""
    for folder in folders:
        if not folder.expanduser().is_dir():
            raise DreamsmithError(f"adapter folder {folder} does not exist; pass a folder written by "
                                  "`dreamsmith personalize`")
    return [{"name": "adapter", "path": str(folder.expanduser().resolve()), "scale": scale,
             "reward_scale": reward_scale} for folder in folders]


def control_specs(controls: list[str]) -> list[dict[str, Any]]:
    """The ``guidance.conditioners`` entries of ``--control SOURCE[,SOURCE...]=MODEL[:SCALE]`` options: a diffusers
    ControlNet folder takes one source, a Uni-ControlNet checkpoint file several (stacked in one adapter)."""
    specs = []
    for text in controls:
        sources, _, model = text.partition("=")
        scale = 1.0
        head, _, tail = model.rpartition(":")
        if head and tail.replace(".", "", 1).isdigit():
            model, scale = head, float(tail)
        names = [name.strip() for name in sources.split(",")]
        uni = model.lower().endswith(UNI_CONTROLNET_SUFFIXES)
        if not model or not all(n in ("depth", "normal", "opacity") for n in names) or (len(names) > 1 and not uni):
            raise DreamsmithError(f"--control {text!r} is not SOURCE=CONTROLNET_DIR[:SCALE] or "
                                  "SOURCE[,SOURCE...]=UNI_CONTROLNET_FILE[:SCALE] with SOURCE depth, normal or "
                                  "opacity, e.g. --control depth=models/cn-depth:0.8")
        if uni:
            specs.append({"name": "uni_controlnet", "model": model, "sources": names, "scale": scale})
        else:
            specs.append({"name": "controlnet", "model": model, "source": names[0], "scale": scale})
    return specs


def _run_command(prompt: str, overrides: list[str], preset: str | None, model: str | None, steps: int | None,
                 seed: int | None, device: str | None, out: Path | None, resume: bool, overwrite: bool, quiet: bool,
                 allow_pickle: bool, threads: int | None, memory_budget: str | None, needs_mesh: bool = False,
                 controls: list[str] = (), regions: list[str] = (), base_ratio: float = 0.3,
                 self_guidance: list[str] = (), self_guidance_weight: float = 1.0,
                 images: ImagePrompts = ImagePrompts(), adapters: list[dict[str, Any]] = ()) -> None:
    """What `generate` and `texture` share: the --control/--region/--self-guidance/--image/--adapter conditioners,
    config, checks, the run with its progress, one-line errors."""
    from dreamsmith.engine.overrides import make_config
    from dreamsmith.engine.threads import apply_thread_policy

    out = out or Path("runs") / _slug(prompt or (images.image.stem if images.image is not None else ""))
    try:
        if not prompt.strip() and images.image is None:
            raise DreamsmithError("the prompt is empty; say what to make: a PROMPT (e.g. dreamsmith generate "
                                  "\"a red cube\") or --image REF.png")
        specs = [*self_guidance_specs(prompt, list(self_guidance), self_guidance_weight), *images.specs(model, prompt),
                 *adapters]
        conditioners = conditioners_override(list(controls), list(regions), base_ratio, specs)
        _machine_settings(threads, memory_budget)
        extra = ["allow_pickle=true"] if allow_pickle else []
        config = make_config(prompt, preset, model, steps, seed, device, [*conditioners, *overrides, *extra])
        if needs_mesh:
            _check_texture_input(config)
        apply_thread_policy(threads)  # after validation: a usage error does not wait to count idle cores
        from dreamsmith.engine.run import Progress as SilentProgress
        from dreamsmith.engine.run import generate as run_generate

        progress = SilentProgress() if quiet else RichProgress()
        report = run_generate(config, out, resume=resume, progress=progress, overwrite=overwrite)
    except DreamsmithError as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        _interrupted(interrupt, out)
    if not quiet:
        _wrote(out, report)


def _wrote(out: Path, report: dict[str, Any]) -> None:
    """The line a finished run ends with: where its asset is."""
    asset = report["asset"]
    console.print(f"wrote {out / asset['path']} ({asset['faces']} triangles)", markup=False, highlight=False)


def _check_texture_input(config: Any) -> None:
    """The preset has a texture stage, and its mesh reads: refused in one line before anything is written
    (the run reuses what was read here and prints its notes)."""
    from dreamsmith.engine.mesh_input import read_user_mesh

    stages = [stage for stage in config.stages if stage.representation == "texture"]
    if not stages:
        raise DreamsmithError(f"preset '{config.preset}' has no texture stage; choose one that has (e.g. toy-texture)")
    read_user_mesh(stages[0].uv_texture.mesh, stages[0].uv_texture.max_faces)


@app.command()
def personalize(
    images: Annotated[list[Path], typer.Argument(help="3-5 images of the subject, or a folder of them (PNG/JPEG; transparent pixels read as white).")],
    token: Annotated[str, typer.Option(help="The new word that names the subject, e.g. \"<sks>\"; must not be a word the model knows.")] = "<sks>",
    class_word: Annotated[str, typer.Option(help="What the subject is, one word the model knows, e.g. cube.")] = "",
    method: Annotated[str, typer.Option(help="textual-inversion (a word only), lora (a UNet LoRA + the word), dreambooth (lora + prior preservation on class images), dco (a LoRA that stays consistent with the base model).")] = "lora",
    steps: Annotated[int, typer.Option(help="Optimization steps.")] = 400,
    model: Annotated[str | None, typer.Option(help="Base model: a diffusers folder, a Hugging Face id or embedded:NAME (default embedded:toyworld).")] = None,
    out: Annotated[Path | None, typer.Option(help="The adapter folder to write (default: adapters/<token>-<method>).")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="AdamW learning rate (default: 5e-3 textual-inversion, 1e-3 the LoRA methods).")] = None,
    prior_weight: Annotated[float, typer.Option(help="dreambooth: weight of the class images' loss (0: plain loss).")] = 1.0,
    class_prompt: Annotated[str | None, typer.Option(help="dreambooth: the prompt of the class images sampled from the base model (default: \"a CLASS_WORD\").")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: DeviceOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped personalization into --out from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an adapter already in --out.")] = False,
    quiet: QuietOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Learn a subject from a few images into an adapter folder for `generate --adapter` (TI, DreamBooth, LoRA, DCO)."""
    from dreamsmith.engine.threads import apply_thread_policy

    out = out or Path("adapters") / _slug(f"{token}-{method}")
    try:
        _machine_settings(threads, None)
        from dreamsmith.engine.personalize import PersonalizeConfig
        from dreamsmith.engine.personalize import personalize as run_personalize

        config = PersonalizeConfig(method=method, token=token, class_word=class_word, steps=steps,  # type: ignore[arg-type]
                                   model=model or "embedded:toyworld", learning_rate=learning_rate,
                                   prior_weight=prior_weight, class_prompt=class_prompt or "", seed=seed,
                                   device=device or "auto")
        apply_thread_policy(threads)
        from dreamsmith.engine.run import Progress as SilentProgress

        run_personalize(images, config, out, resume=resume, overwrite=overwrite,
                        progress=SilentProgress() if quiet else RichProgress())
    except DreamsmithError as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        _ignore_further_stops()
        console.print(f"interrupted; continue with --resume (the checkpoint is beside {out})", markup=False)
        raise typer.Exit(getattr(interrupt, "exit_code", 130)) from None
    if not quiet:
        console.print(f"wrote {out}; use it with --adapter {out}", markup=False, highlight=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (written by `dreamsmith generate`).")],
    more_formats: Annotated[list[str] | None, typer.Argument(help="Further formats after --format, e.g. --format glb obj usdz.", show_default=False)] = None,
    format: Annotated[list[str] | None, typer.Option("--format", help="glb, gltf, obj or usdz; repeat, or list after it (default glb).")] = None,
    texture_size: Annotated[int, typer.Option(help="Base-colour texture side in texels: 512, 1024, 2048 or 4096.")] = 1024,
    max_triangles: Annotated[int | None, typer.Option(help="Triangle budget (quadric decimation, at least 100); default: keep all.")] = None,
    lods: Annotated[int, typer.Option(help="Further levels of detail, each ~50 % of the triangles (asset_lod1.glb, ...).")] = 0,
    origin: Annotated[str, typer.Option(help="center: bounding box centred on the origin; base: resting on y = 0.")] = "center",
    scale: Annotated[float | None, typer.Option(help="Longest bounding-box side in metres; default: the run's metres.")] = None,
    align_yaw: Annotated[bool, typer.Option("--align-yaw/--keep-yaw", help="Turn the asset about +Y (at most 45 deg) to square its footprint to x and z.")] = True,
    surface_colour: Annotated[str, typer.Option(help="seen: bake the colour the field shows along the surface normal (right for translucent fields); surface: the albedo at the surface point only.")] = "seen",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the run directory).")] = None,
    profile: Annotated[str, typer.Option(help="QA budgets: mobile, pc or hero.")] = "pc",
    preview_size: Annotated[int, typer.Option(help="Turntable frame size in pixels (poster: twice); 0: no previews.")] = 256,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing but errors.")] = False,
    threads: ThreadsOption = None,
    memory_budget: MemoryBudgetOption = None,
) -> None:
    """Write RUN_DIR's asset as UV-textured PBR GLB/glTF/OBJ/USDZ with LODs, a QA report and previews."""
    from dreamsmith.engine.threads import apply_thread_policy

    formats = [name.strip().lower() for value in [*(format or ["glb"]), *(more_formats or [])] for name in value.split(",")]
    try:
        _machine_settings(threads, memory_budget)
        apply_thread_policy(threads)
        from dreamsmith.engine.export import export_run

        result = export_run(run_dir, formats=formats, texture_size=texture_size, max_triangles=max_triangles, lods=lods,
                            origin=origin, scale=scale, align_yaw=align_yaw, surface_colour=surface_colour, out=out,
                            profile=profile, preview_resolution=preview_size)
    except DreamsmithError as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        console.print("interrupted; nothing was written")
        raise typer.Exit(getattr(interrupt, "exit_code", 130)) from None
    if quiet:
        return
    report = result.qa["asset"]
    table = Table("check", "value", "limit", f"{report['profile']}", title=f"QA: {report['status'].upper()}")
    for check, value, limit, status in [(c["check"], str(c["value"]), c["limit"], c["status"]) for c in report["checks"]]:
        colour = {"pass": "green", "warn": "yellow", "fail": "red"}[status]
        table.add_row(escape(check), escape(value), escape(str(limit)), f"[{colour}]{status}[/{colour}]")
    Console().print(table)
    for path in result.paths:
        Console().print(f"wrote {path}", highlight=False, markup=False)


@app.command()
def presets() -> None:
    """List presets and their stages."""
    from dreamsmith.engine.presets import load_preset, preset_names

    table = Table("preset", "default model", "stages", "description")
    for name in preset_names():
        preset = load_preset(name)
        stages = " -> ".join(f"{s.get('name')} ({s.get('steps')} steps, {s.get('guidance', {}).get('name', 'sds')})"
                             for s in preset["stages"])
        table.add_row(name, str(preset.get("model")), stages, preset.get("description", ""))
    Console().print(table)


@app.command()
def doctor() -> None:
    """Print the Python/torch/device and which backend each part of the pipeline uses, and why."""
    from dreamsmith.engine.backends import backend_report

    table = Table("part", "backend", "why")
    for row in backend_report():
        table.add_row(*row)
    Console().print(table)


def _slug(prompt: str) -> str:
    """The default run folder's name: the prompt's words, or (no letters or digits) a hash of it."""
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in prompt.lower()).strip("-")
    slug = "-".join(filter(None, slug.split("-")))[:60].strip("-")
    return slug or "run-" + hashlib.sha1(prompt.encode()).hexdigest()[:8]


def _quiet_libraries() -> None:
    """Model loading prints progress bars and warnings that mean nothing to a user of this CLI. Set
    through the environment, which the libraries read when (and only if) a command imports them."""
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _ignore_further_stops() -> None:
    """The process is ending after a stop: another Ctrl-C must not cut its exit (and exit code) short."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    from dreamsmith.engine.signals import RunInterrupted

    raise RunInterrupted(signum)


def main() -> None:
    """Entry point: user mistakes end in one line, not a traceback; SIGTERM stops like Ctrl-C (a run
    defers both to its next step boundary)."""
    _quiet_libraries()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        app()
    except DreamsmithError as error:
        _error_line(error)
        sys.exit(1)
    except KeyboardInterrupt as interrupt:
        _ignore_further_stops()
        console.print("interrupted", markup=False)
        sys.exit(getattr(interrupt, "exit_code", 130))
    except Exception as error:
        if os.environ.get("DREAMSMITH_DEBUG"):
            raise
        console.print(f"[red]internal error:[/red] {escape(type(error).__name__)}: {escape(str(error))} "
                      "(set DREAMSMITH_DEBUG=1 for the traceback and report it)", highlight=False, soft_wrap=True)
        sys.exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8642,
    token: Annotated[str | None, typer.Option(help="Shared secret (16+ characters) every client must send as 'Authorization: Bearer TOKEN'.", envvar="DREAMSMITH_TOKEN")] = None,
    jobs_dir: Annotated[Path, typer.Option(help="Folder of the job queue (jobs.sqlite) and the jobs' run directories.")] = Path("jobs"),
    device: Annotated[list[str] | None, typer.Option(help="Device jobs run on, one job at a time each; repeat for several (default auto).")] = None,
) -> None:
    """Serve the job API (and the Blender extension) on http://HOST:PORT; queued and interrupted jobs resume."""
    from dreamsmith.server import ServerConfig
    from dreamsmith.server import serve as run_server

    config = ServerConfig(host=host, port=port, token=token, jobs_dir=jobs_dir, devices=tuple(device or ["auto"]))
    try:
        run_server(config, announce=console.print)
    except DreamsmithError as error:
        _fail(error)
    except ModuleNotFoundError as error:
        _fail(DreamsmithError(f"the server needs its extra: pip install 'dreamsmith[server]' ({error.name} is missing)"))


@app.command()
def batch(
    manifest: Annotated[Path, typer.Argument(help="Jobs, one per row: a .jsonl, .csv or .yaml manifest (see the README).")],
    executor: Annotated[str, typer.Option(help="local (worker processes here) or ray (the distributed extra).")] = "local",
    workers: Annotated[int | None, typer.Option(help="Jobs at once (default: one per GPU, else 1; ray --address: the cluster's CPUs / --threads).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per job (default: the CPUs split between the workers).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (host:port, ray://host:port or auto); default: a local Ray.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: runs/<manifest name>).")] = None,
    retry: Annotated[int, typer.Option(help="Further attempts of a job that fails or whose worker dies.")] = 2,
    only: Annotated[str | None, typer.Option(help="failed (retry failed jobs afresh) or pending (only unfinished ones).")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Run the valid rows when some are invalid.")] = False,
    quiet: QuietOption = False,
    adapter: AdapterOption = None,
    adapter_scale: AdapterScaleOption = 1.0,
    adapter_reward: AdapterRewardOption = 0.0,
) -> None:
    """Make every asset of MANIFEST into --out: validated first, resumable (re-run to continue), with a
    ledger, summary.json/summary.csv and gallery.html."""
    from dreamsmith.engine.batch import BatchOptions, BatchProgress, run_batch
    from dreamsmith.engine.batch.progress import RichBatchProgress

    try:
        adapters = conditioners_override(extra=adapter_specs(adapter or [], adapter_scale, adapter_reward))
        options = BatchOptions(executor=executor, workers=workers, threads=threads, address=address, out=out,
                               retry=retry, only=only.lower() if only else None,  # type: ignore[arg-type]
                               skip_invalid=skip_invalid, overrides=tuple(adapters))
        result = run_batch(manifest, options, BatchProgress() if quiet else RichBatchProgress(console))
    except DreamsmithError as error:
        _fail(error)
    except KeyboardInterrupt:
        console.print("interrupted again: running jobs keep their last periodic checkpoint; re-run the same command "
                      "to resume")
        raise typer.Exit(130) from None
    counts = result.counts
    line = (f"{counts['done']} done, {counts['failed']} failed, {counts['pending'] + counts['interrupted']} unfinished"
            f", {counts['invalid']} invalid rows ({result.ran} run now) in {result.out}")
    console.print(line if result.ran or quiet else f"nothing to do: {line}", highlight=False, soft_wrap=True)
    if result.gallery is not None and not quiet:
        console.print(f"gallery: {result.gallery}", highlight=False, soft_wrap=True)
    if result.interrupted:
        raise typer.Exit(130)
    if counts["failed"] or counts["pending"] or counts["interrupted"]:
        raise typer.Exit(1)


@app.command()
def gallery(
    folder: Annotated[Path, typer.Argument(help="A batch output directory, or a folder of run directories.")],
    title: Annotated[str | None, typer.Option(help="Page title (default: the folder's name).")] = None,
) -> None:
    """Write FOLDER/gallery.html: every asset in a 3D viewer with its previews, QA badge and files (opens offline)."""
    from dreamsmith.engine.batch import write_gallery

    try:
        page = write_gallery(folder, title)
    except DreamsmithError as error:
        _fail(error)
    console.print(f"wrote {page}", highlight=False, soft_wrap=True)


convert_app = typer.Typer(no_args_is_help=True, help="Turn checkpoints published in other layouts into model folders.")
app.add_typer(convert_app, name="convert")


@convert_app.command("mvdream")
def convert_mvdream(
    checkpoint: Annotated[Path, typer.Argument(help="MVDream's LDM-layout checkpoint, e.g. sd-v2.1-base-4view.pt or a .safetensors conversion.")],
    out_dir: Annotated[Path, typer.Argument(help="The diffusers model folder to write (new or empty).")],
    base: Annotated[str, typer.Option(help="Pipeline whose VAE, text encoder, tokenizer and scheduler MVDream kept: a folder or Hugging Face id.")] = "stabilityai/stable-diffusion-2-1-base",
    config: Annotated[Path | None, typer.Option(help="LDM config of another UNet size (MVDream's format); default: sd-v2.1-base-4view's.")] = None,
    allow_pickle: AllowPickleOption = False,
) -> None:
    """Convert MVDream's multi-view checkpoint into a model folder for guidance.name=mvdream (--preset mvdream)."""
    from dreamsmith.engine.convert import convert_mvdream as convert

    try:
        written = convert(checkpoint, out_dir, base, config, allow_pickle)
    except DreamsmithError as error:
        _fail(error)
    console.print(f"wrote {written}; use it with --preset mvdream --model {written}", markup=False, highlight=False)
