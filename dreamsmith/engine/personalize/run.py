"""``dreamsmith personalize``: subject images in, an adapter folder out (resumable, written atomically).

Work in progress lives beside the output in ``.NAME.partial/`` (the checkpoint); the adapter is written
into a temporary folder and renamed to ``--out`` only when complete, so an interrupted or failed run
never leaves a half-written adapter, and an existing one is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamsmith.engine.checkpoint import load_checkpoint, save_checkpoint
from dreamsmith.engine.device import resolve_device
from dreamsmith.engine.personalize.card import loss_curve, write_card
from dreamsmith.engine.personalize.config import PersonalizeConfig
from dreamsmith.engine.personalize.images import image_paths, read_images
from dreamsmith.engine.personalize.trainer import LORA_NAME, Personalizer
from dreamsmith.engine.presets import resolve_model
from dreamsmith.engine.previews import image_grid
from dreamsmith.engine.run import Progress
from dreamsmith.engine.signals import RunInterrupted, deferred_stop_signals
from dreamsmith.errors import RunDirError
from dreamsmith.guidance.adapters import ADAPTER_FILE, AdapterInfo, model_fingerprint
from dreamsmith.guidance.lora import LORA_FILE, save_lora_file
from dreamsmith.guidance.sampling import ddim_sample
from dreamsmith.guidance.textual_inversion import EMBEDS_FILE, save_embeddings

CHECKPOINT = "checkpoint.pt"
CLASS_CACHE = ".dreamsmith-class-images"
GRID_SAMPLES = 4


def work_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def personalize(inputs: list[Path], config: PersonalizeConfig, out: Path | str, resume: bool = False,
                overwrite: bool = False, progress: Progress | None = None, prior: Any = None) -> AdapterInfo:
    """Learn the subject of the images ``inputs`` (files or folders) into the adapter folder ``out``.

    prior: an already loaded prior of ``config.model`` (tests); it is changed (the token, the LoRA).
    resume: continue from the checkpoint a stopped run left (same images and settings; the step count may
    grow). SIGINT/SIGTERM stop at the next step with a checkpoint (:class:`RunInterrupted`).
    """
    progress = progress or Progress()
    out = Path(out)
    paths = image_paths(list(inputs))
    images = read_images(paths, progress.message)
    work = work_folder(out)
    if out.exists() and not overwrite:
        raise RunDirError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    if resume and not (work / CHECKPOINT).exists():
        raise RunDirError(f"nothing to resume: {work} holds no checkpoint of a stopped personalization")
    if not resume and (work / CHECKPOINT).exists() and not overwrite:
        raise RunDirError(f"an unfinished personalization into {out} is in {work}; continue it with --resume, "
                          "or pass --overwrite to start over")
    device = resolve_device(config.device)
    if prior is None:
        from dreamsmith.guidance.loading import load_prior

        prior = load_prior(resolve_model(config.model), device=device)
    class_images = class_image_set(prior, config, out.parent, progress) if config.method == "dreambooth" else None
    cuda = [prior.device.index or 0] if prior.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(config.seed)  # the LoRA's A is drawn at init: part of "same seed, same adapter"
        trainer = Personalizer(prior, config, images, class_images)  # refuses a token the model already has
    identity = run_identity(config, images)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    pick = random.Random(config.seed)
    losses: list[float] = []
    start = 0
    if resume:
        state = load_checkpoint(work / CHECKPOINT)
        if state.get("identity") != identity:
            raise RunDirError(f"cannot resume: the checkpoint in {work} was made from other images or settings; "
                              "pass --overwrite to start over")
        if state["step"] > config.steps:
            raise RunDirError(f"cannot resume: the checkpoint is at step {state['step']}, beyond --steps "
                              f"{config.steps}")
        trainer.load_state_dict(state["trainer"])
        generator.set_state(state["generator_state"])
        pick.setstate(_pick_state(state["pick_state"]))
        losses, start = list(state["losses"]), int(state["step"])
    elif work.exists():
        shutil.rmtree(work)

    def checkpoint(step: int) -> None:
        save_checkpoint(work / CHECKPOINT, {"step": step, "trainer": trainer.state_dict(), "losses": losses,
                                            "generator_state": generator.get_state().cpu(),
                                            "pick_state": list(_flatten(pick.getstate())), "identity": identity})

    progress.stage_started(f"personalize {config.method}", start, config.steps)
    with deferred_stop_signals() as stop_requested:
        for step in range(start, config.steps):
            if stop_requested() is not None:
                checkpoint(step)
                raise RunInterrupted(stop_requested(), step)
            losses.append(trainer.step(generator, pick))
            done = step + 1
            if done % config.checkpoint_every == 0 or done == config.steps:
                checkpoint(done)
            progress.step(done, losses[-1], {})
    progress.stage_finished(f"personalize {config.method}")
    progress.message("sampling the model card's grid")
    info = AdapterInfo(method=config.method, base_model=config.model, base_model_hash=model_fingerprint(prior),
                       token=config.token, class_word=config.class_word, steps=config.steps,
                       lora_rank=config.lora_rank if config.uses_lora else 0, losses=loss_curve(losses),
                       settings=_settings(config))
    write_adapter(out, prior, trainer, info, [p.name for p in paths], sample_grid(prior, trainer, images), overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return info


def sample_grid(prior: Any, trainer: Personalizer, images: Tensor) -> Any:
    """Rows: the subject images; the adapted model's "a TOKEN CLASS"; the base model's "a CLASS"."""
    config = trainer.config
    generator = torch.Generator(device=prior.device).manual_seed(config.seed)
    adapted = ddim_sample(prior, [config.instance_prompts()[0]] * GRID_SAMPLES, generator, config.sample_steps,
                          config.guidance_scale, trainer.conditioners(), base_conditioners=trainer.conditioners(0.0),
                          reward_scale=config.reward_scale if config.method == "dco" else 0.0)
    generator.manual_seed(config.seed)
    base = ddim_sample(prior, [config.class_text()] * GRID_SAMPLES, generator, config.sample_steps,
                       config.guidance_scale, trainer.conditioners(0.0))
    size = prior.image_size
    subject = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                              align_corners=False).permute(0, 2, 3, 1)[:GRID_SAMPLES]
    pad = torch.ones(GRID_SAMPLES - len(subject), size, size, 3)
    return image_grid([torch.cat([subject, pad]), adapted.cpu(), base.cpu()])


def write_adapter(out: Path, prior: Any, trainer: Personalizer, info: AdapterInfo, image_names: list[str],
                  grid: Any, overwrite: bool) -> None:
    """The adapter folder, built in a temporary folder and renamed to ``out`` when complete."""
    temp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        save_embeddings(temp / EMBEDS_FILE, {info.token: trainer.embedding()})
        if info.lora_rank:
            save_lora_file(prior.unet, LORA_NAME, temp / LORA_FILE, info.lora_rank, float(info.lora_rank))
        info.save(temp / ADAPTER_FILE)
        write_card(temp, info, image_names, grid)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists() and overwrite:
            os.replace(out, old)
        os.replace(temp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def class_image_set(prior: Any, config: PersonalizeConfig, parent: Path, progress: Progress) -> Tensor:
    """DreamBooth's class images ``[M, H, W, 3]``: the class prompt sampled from the base model (camera dropped),
    cached in ``parent/.dreamsmith-class-images/`` by model, prompt, count, seed and sampler settings."""
    from safetensors.torch import load_file, save_file

    from dreamsmith.engine.run_dir import atomic_write

    key = (f"{model_fingerprint(prior) or 'model'}-{config.class_text()}-{config.class_images}-{config.seed}-"
           f"{config.sample_steps}-{config.guidance_scale:g}")
    path = parent / CLASS_CACHE / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
    if path.is_file():
        return load_file(str(path))["images"].float() / 255.0
    progress.message(f"sampling {config.class_images} class images of '{config.class_text()}' from the base model")
    generator = torch.Generator(device=prior.device).manual_seed(config.seed + 1)
    images = ddim_sample(prior, [config.class_text()] * config.class_images, generator, config.sample_steps,
                         config.guidance_scale).cpu()
    stored = (images * 255).round().clamp(0, 255).to(torch.uint8).contiguous()
    atomic_write(path, lambda temp: save_file({"images": stored}, str(temp)))
    return stored.float() / 255.0


def run_identity(config: PersonalizeConfig, images: Tensor) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the images and every setting but the step count."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("steps", "device")}
    digest = hashlib.sha256(images.numpy().tobytes()).hexdigest()[:16]
    return {"settings": repr(sorted(settings.items())), "images": digest}


def _settings(config: PersonalizeConfig) -> dict[str, Any]:
    keep = ["lr", "lora_rank", "batch_size", "seed"]
    keep += {"dreambooth": ["prior_weight", "class_images"], "dco": ["dco_beta", "reward_scale"]}.get(config.method, [])
    return {**{name: getattr(config, name) for name in keep}, "class_prompt": config.class_text()}


def _flatten(state: tuple) -> list[int]:
    """random.Random's state as plain ints (what a weights-only checkpoint can hold); its cached Gaussian is
    always None here (only ``randrange``/``choice`` are drawn)."""
    version, internal, _ = state
    return [version, *internal, 0]


def _pick_state(values: list[int]) -> tuple:
    return values[0], tuple(values[1:-1]), None
