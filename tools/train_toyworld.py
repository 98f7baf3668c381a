"""Train the embedded toyworld prior (TOYWORLD.md "The model") and save it as a diffusers folder.

Pixel-space, epsilon-prediction DDPM (1000 steps, cosine schedule) with a small
``UNet2DConditionModel``; text through a tiny jointly trained ``CLIPTextModel`` with a word-level
tokenizer; camera as the c2w matrix flattened to 16 numbers (translation / camera distance) through
the UNet's class-embedding projection. Text and camera are each dropped 10 % of the time so
classifier-free and camera-free guidance work. Seeded and reproducible (same seed, same threads).

    python tools/train_toyworld.py --steps 3000 --batch-size 48 --n-images 20000

Checkpoints (training state + an exported model folder) are written atomically every
``--checkpoint-every`` steps; ``--resume`` continues from the last one.

``--camera-rays`` also gives the UNet the camera as six Plücker ray channels per pixel (camera
conditioning "c2w16+rays"): an image-aligned signal a convolution reads directly, where the class
embedding alone was learnt but not used. ``--init-from`` fine-tunes an existing model folder; with
``--camera-rays`` its first convolution gains the ray channels with zero weights, so training starts
from exactly the old model.

``--views-per-group 4`` trains the multi-view prior (MVDream, Shi et al. 2023): each batch item is a
group of four renders of one object (shared elevation and distance, azimuths a random start plus 0,
90, 180, 270 deg, as the ``mvdream`` guidance samples them), one t per group, caption and camera
dropped per group, and the multi-view attention processor folding each group into one sequence in
every self-attention. ``--freeze-text-encoder`` with ``--init-from`` trains the UNet only and exports
a delta folder: its ``dreamsmith.json`` names the init folder as ``base`` for the text encoder,
tokenizer and scheduler.

``--edit-pairs`` (with ``--init-from``) fine-tunes the editing model ``toyworld-ip2p`` (InstructPix2Pix,
Brooks et al. 2023): the UNet gains the source image as three more input channels after the ray
channels (zero weights, so it starts as the init model), the tokenizer the instructions' words, and it
learns to denoise the render of caption B given the render of caption A from the same camera and the
instruction ("make it blue", "turn it into a sphere"; :mod:`dreamsmith.toyworld.edits`). Text, image and
both are each dropped ``--edit-dropout`` of the time for the three-branch guidance. The export is a delta
folder (UNet, text encoder and tokenizer; the scheduler from the init folder) whose ``dreamsmith.json``
says ``image_channels`` and lists the instructions as its known prompts.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dreamsmith.guidance.attention import hooks_active  # noqa: E402
from dreamsmith.guidance.multiview import MULTIVIEW, MultiViewAttention  # noqa: E402
from dreamsmith.guidance.priors import RAY_CHANNELS, c2w16_labels  # noqa: E402
from dreamsmith.renderers.cameras import Cameras  # noqa: E402
from dreamsmith.toyworld import world as tw  # noqa: E402
from dreamsmith.toyworld.data import ToyworldDataset, generate_toyworld_dataset  # noqa: E402
from dreamsmith.toyworld.edits import EDIT_WORDS, INSTRUCTIONS, EditPairs, generate_edit_pairs  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dreamsmith" / "models" / "toyworld"
TEXT_LENGTH = 6  # [BOS] an orange cube [EOS] + one pad; "" pads to the same length
EDIT_TEXT_LENGTH = 8  # [BOS] turn it into a cylinder [EOS] + one pad (the text encoder's 8 positions)
IMAGE_CHANNELS = 3  # the edit model's source image, in [-1, 1], after the ray channels
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def add_run_arguments(parser: argparse.ArgumentParser, state_dir: str, steps: int) -> None:
    """The options every toyworld training tool shares: length, data, seed, optimiser, checkpoints."""
    parser.add_argument("--state-dir", type=Path, default=Path(state_dir), help="training checkpoints (for --resume)")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--n-images", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100, help="linear warmup steps before cosine decay")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--resume", action="store_true", help="continue from --state-dir")
    parser.add_argument("--time-only", action="store_true", help="print seconds per step and exit unsaved")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model folder to write")
    add_run_arguments(parser, "runs/toyworld_train", 3000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=str, default="32,64,96,128", help="UNet block_out_channels")
    parser.add_argument("--camera-rays", action="store_true",
                        help="also feed the camera as Plücker ray channels (camera_conditioning c2w16+rays)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this model folder's UNet and text encoder (fine-tuning)")
    parser.add_argument("--elevation-range", type=float, nargs=2, default=list(tw.ELEVATION_RANGE_DEG),
                        metavar=("LO", "HI"), help="camera elevations of the training renders, degrees")
    parser.add_argument("--text-dropout", type=float, default=0.1, help="caption -> '' probability")
    parser.add_argument("--camera-dropout", type=float, default=0.1, help="camera -> zeros probability")
    parser.add_argument("--oversample", type=str, default="",
                        help="WORD=FACTOR: renders whose caption has WORD are drawn FACTOR times as often "
                             "(e.g. cube=3: the one shape whose look depends on the azimuth)")
    parser.add_argument("--high-t-fraction", type=float, default=0.0,
                        help="fraction of each batch whose timestep is drawn from the top 30 %% of the "
                             "schedule (where only the camera tells the object's pose), the rest uniform")
    parser.add_argument("--max-weight", type=float, default=1.0,
                        help="truncated-SNR loss weight cap: each sample's epsilon loss times "
                             "clamp(1 / SNR(t), 1, MAX); 1 = plain epsilon loss")
    parser.add_argument("--views-per-group", type=int, default=1,
                        help="F > 1: train a multi-view model on groups of F renders of one object, "
                             "360/F deg apart, with multi-view attention (MVDream: 4)")
    parser.add_argument("--freeze-text-encoder", action="store_true",
                        help="train the UNet only; with --init-from, export a delta folder whose "
                             "dreamsmith.json names the init folder as its base")
    parser.add_argument("--edit-pairs", action="store_true",
                        help="with --init-from: train the InstructPix2Pix editing model on --n-images edit "
                             "pairs (source render, instruction, target render from the same camera)")
    parser.add_argument("--edit-dropout", type=float, default=0.05,
                        help="--edit-pairs: probability of dropping the text only, the image only, and both "
                             "(each; InstructPix2Pix's 5 %%)")
    args = parser.parse_args(argv)
    if args.edit_pairs and (args.init_from is None or args.views_per_group != 1 or args.oversample):
        parser.error("--edit-pairs fine-tunes a single-view model: it needs --init-from, and takes neither "
                     "--views-per-group nor --oversample")
    if not 0 <= 3 * args.edit_dropout <= 1:
        parser.error(f"--edit-dropout {args.edit_dropout} must be in [0, 1/3]")
    if args.views_per_group < 1 or args.batch_size % args.views_per_group:
        parser.error(f"--batch-size {args.batch_size} must be a whole number of groups of "
                     f"--views-per-group {args.views_per_group} (>= 1) views")
    if args.n_images < args.views_per_group:
        parser.error(f"--n-images {args.n_images} holds no group of {args.views_per_group} views")
    if args.freeze_text_encoder and args.init_from is None:
        parser.error("--freeze-text-encoder needs --init-from: a text encoder trained from scratch must train")
    return args


def build_tokenizer(extra_words: tuple[str, ...] = (), length: int = TEXT_LENGTH) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toyworld's words, padded to ``length``; ``extra_words`` get the ids
    after the caption words (so a model trained on the plain tokenizer reads its ids unchanged)."""
    words = [*SPECIAL_TOKENS, "a", "an", *tw.COLOURS, *tw.SHAPES, *extra_words]
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=length)


def build_text_encoder(tokenizer: PreTrainedTokenizerFast) -> CLIPTextModel:
    """A 2-layer, 64-wide CLIP text transformer (trained from scratch with the UNet)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=8, projection_dim=64,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def build_unet(resolution: int, channels: tuple[int, ...], in_channels: int = 3) -> UNet2DConditionModel:
    """Pixel-space UNet with (cross-)attention from the third level down (8x8 at 32^2).

    Attention at 32x32/16x16 would cost more than a whole extra level of convolutions on a CPU.
    """
    n_plain = min(2, len(channels) - 1)
    n_attn = len(channels) - n_plain
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=in_channels, out_channels=3, layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * n_plain + ("CrossAttnDownBlock2D",) * n_attn,
        up_block_types=("CrossAttnUpBlock2D",) * n_attn + ("UpBlock2D",) * n_plain,
        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
        class_embed_type="projection", projection_class_embeddings_input_dim=16,
    )


def build_scheduler() -> DDPMScheduler:
    """1000-step DDPM; cosine betas (Nichol & Dhariwal 2021): the linear schedule wastes its last
    steps on pure noise at 32x32 in pixel space."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=True)


def camera_condition(c2w: torch.Tensor) -> torch.Tensor:
    """``[B, 16]`` conditioning from ``c2w [B, 4, 4]``: row-major, translation / camera distance."""
    return c2w16_labels(c2w.float(), tw.CAMERA_DISTANCE)


def camera_rays(c2w: torch.Tensor, resolution: int) -> torch.Tensor:
    """``[B, 6, H, W]`` Plücker ray channels of the training cameras (as the prior builds them)."""
    n = c2w.shape[0]
    cameras = Cameras(c2w.float(), torch.full((n,), tw.FOVY_DEG), torch.zeros(n), torch.zeros(n),
                      torch.full((n,), tw.CAMERA_DISTANCE), resolution, resolution)
    return cameras.plucker_map(tw.CAMERA_DISTANCE)


def add_input_channels(unet: UNet2DConditionModel, n: int) -> UNet2DConditionModel:
    """``unet`` with ``n`` more input channels (after its own) whose first-convolution weights are zero:
    the widened model computes exactly what ``unet`` did, whatever the new channels hold."""
    old = unet.conv_in
    new = torch.nn.Conv2d(old.in_channels + n, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


def load_init(folder: Path, camera_rays: bool) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """The UNet and text encoder of an existing model folder, in fp32, ready to fine-tune."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    if camera_rays and unet.config.in_channels == 3:
        add_input_channels(unet, RAY_CHANNELS)
    return unet, text_encoder


def widen_for_edits(unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                    tokenizer: PreTrainedTokenizerFast) -> None:
    """Make an init model the untrained editing model: ``IMAGE_CHANNELS`` zero-weight input channels for
    the source image, token embeddings for ``tokenizer``'s new words (the old ids keep theirs)."""
    add_input_channels(unet, IMAGE_CHANNELS)
    text_encoder.resize_token_embeddings(len(tokenizer))


def swap_articles(captions: list[str], mask: torch.Tensor) -> list[str]:
    """Swap "a" <-> "an" where ``mask [B]`` is set, so either article works at inference."""
    swapped = {"a": "an", "an": "a"}
    return [f"{swapped[c.split(' ', 1)[0]]} {c.split(' ', 1)[1]}" if m else c
            for c, m in zip(captions, mask.tolist(), strict=True)]


def loss_weights(alphas_cumprod: torch.Tensor, max_weight: float) -> torch.Tensor:
    """Per-sample weights ``clamp(1 / SNR(t), 1, max_weight)`` of the epsilon loss (Salimans & Ho 2022's
    truncated SNR weighting, capped). The plain epsilon loss barely rewards getting x0 right at high
    noise, where the image says little and the camera says most: an x0 error e costs only
    SNR(t) * e there (0.024 e at t = 900), so a model learns to ignore its camera."""
    return ((1 - alphas_cumprod) / alphas_cumprod).clamp(1.0, max(1.0, max_weight))


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 1 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` over all parameters."""
    for ema_p, p in zip(ema.parameters(), model.parameters(), strict=True):
        ema_p.lerp_(p, 1 - decay)


def atomic_torch_save(obj: object, path: Path) -> None:
    """Write a file so a crash never leaves it half written (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def record_step(log: dict, step: int, loss: float, t_loop: float, args: argparse.Namespace) -> None:
    """Log the step's loss and the time so far; print the recent mean every ``--log-every`` steps."""
    log["losses"].append(round(loss, 6))
    log["train_seconds"] = time.time() - t_loop
    print_progress(log, step, args.steps, args.log_every)


def save_training_state(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                        generator: torch.Generator, step: int, log: dict) -> None:
    """Everything a resumed run needs (each module's state under its name), written atomically."""
    atomic_torch_save({**{name: module.state_dict() for name, module in modules.items()},
                       "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                       "torch_rng": torch.get_rng_state(), "step": step, "log": log}, path)


def load_training_state(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                        generator: torch.Generator, command: str, data_seconds: float) -> tuple[int, dict]:
    """Restore what :func:`save_training_state` wrote; ``(step, log)`` with the resume recorded in the log and
    ``data_seconds`` (the resumed run rendered its data again) added to its rendering time."""
    state = torch.load(path, weights_only=False)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    step, log = state["step"], state["log"]
    log.setdefault("resumes", []).append({"step": step, "command": command})
    log["data_seconds"] += data_seconds
    print(f"resumed at step {step}", flush=True)
    return step, log


def training_loop(step: int, log: dict, args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                  generator: torch.Generator, state_path: Path, modules: dict[str, torch.nn.Module],
                  train_step: Callable[[int], float], export: Callable[[int], None]) -> dict:
    """The trainers' loop from ``step`` to ``args.steps``: the learning-rate schedule, ``train_step(step)`` (one
    optimizer step, returning its loss), the log, and every ``--checkpoint-every`` steps (and at the end) the
    training state saved and ``export(step)``. ``--time-only`` returns before the last checkpoint."""
    t_loop = time.time() - log["train_seconds"]
    while step < args.steps:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, args.warmup, args.steps)
        loss = train_step(step)
        step += 1
        record_step(log, step, loss, t_loop, args)
        if args.time_only and step >= args.steps:
            return log
        if step % args.checkpoint_every == 0 or step == args.steps:
            log["steps_done"] = step
            save_training_state(state_path, modules, optimizer, generator, step, log)
            export(step)
    return log


def command_line(argv: list[str] | None) -> str:
    """The command that ran this tool, for its training log and model card."""
    return "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])


def export_model(out: Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                 tokenizer: PreTrainedTokenizerFast, scheduler: DDPMScheduler, resolution: int,
                 train_log: dict, elevation_range: tuple[float, float] = tw.ELEVATION_RANGE_DEG,
                 views_per_group: int = 1, base: Path | None = None, own_text: bool = False,
                 image_channels: int = 0) -> None:
    """Write the diffusers folder next to ``out`` and swap it in, keeping the card's files.

    views_per_group > 1: ``dreamsmith.json`` names the multi-view attention. base: a model folder whose
    text encoder, tokenizer and scheduler this one shares; only the UNet is written (and the text encoder
    and tokenizer with ``own_text``) and ``dreamsmith.json`` names the base by its path relative to
    ``out``. image_channels > 0: an editing model whose UNet reads that many source-image channels after
    the ray channels; its known prompts are the instructions."""
    import diffusers

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # fp16 on disk halves the size; loaders pass torch_dtype=torch.float32 on a CPU
    copy.deepcopy(unet).half().save_pretrained(tmp / "unet", safe_serialization=True)
    if base is None or own_text:
        copy.deepcopy(text_encoder).half().save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
    if base is None:
        scheduler.save_pretrained(tmp / "scheduler")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "ToyworldPipeline", "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDPMScheduler"],
    }, indent=2) + "\n")
    metadata = {
        "camera_conditioning": "c2w16+rays" if unet.config.in_channels - image_channels > 3 else "c2w16",
        "camera_distance": tw.CAMERA_DISTANCE, "resolution": resolution,
        "known_prompts": list(INSTRUCTIONS if image_channels else tw.ALL_CAPTIONS), "fovy_deg": tw.FOVY_DEG,
        "elevation_range": list(elevation_range),
    }
    if image_channels:
        metadata["image_channels"] = image_channels
    if views_per_group > 1:
        metadata |= {"attention": MULTIVIEW, "views_per_group": views_per_group}
    if base is not None:
        metadata["base"] = os.path.relpath(base.resolve(), out.resolve())
    (tmp / "dreamsmith.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (tmp / "train_log.json").write_text(json.dumps(train_log) + "\n")
    swap_in(tmp, out)


CARD_FILES = ("README.md", "loss.png", "samples.png", "consistency.png", "consistency.json")


def swap_in(tmp: Path, out: Path, card_files: tuple[str, ...] = CARD_FILES) -> None:
    """Replace the folder ``out`` by the freshly written ``tmp`` (never half written), keeping ``out``'s model-card
    files ``card_files``."""
    for keep in card_files:
        if (out / keep).exists():
            shutil.copy2(out / keep, tmp / keep)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def print_progress(log: dict, step: int, steps: int, log_every: int) -> None:
    """One line of progress every ``log_every`` steps (and after the first): mean recent loss, speed, time."""
    if step % log_every == 0 or step == 1:
        recent = log["losses"][-log_every:]
        print(f"step {step}/{steps} loss {sum(recent) / len(recent):.4f} "
              f"{log['train_seconds'] / step:.2f}s/step elapsed {log['train_seconds'] / 60:.1f}min", flush=True)


def sampling_weights(data: ToyworldDataset, oversample: str) -> torch.Tensor | None:
    """Per-render draw weights ``[N]`` from ``WORD=FACTOR`` (None: uniform)."""
    if not oversample:
        return None
    word, factor = oversample.split("=")
    has_word = torch.tensor([word in caption.split() for caption in tw.TRAIN_CAPTIONS])
    return torch.where(has_word[data.caption_index], float(factor), 1.0)


def sample_timesteps(batch_size: int, total: int, high_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``[B]`` timesteps: uniform, with ``high_fraction`` of them from the top 30 % of the schedule."""
    uniform = torch.randint(0, total, (batch_size,), generator=generator)
    if high_fraction <= 0:
        return uniform
    high = torch.randint(int(0.7 * total), total, (batch_size,), generator=generator)
    return torch.where(torch.rand(batch_size, generator=generator) < high_fraction, high, uniform)


def training_batch(data: ToyworldDataset, tokenizer: PreTrainedTokenizerFast, batch_size: int,
                   generator: torch.Generator, with_rays: bool = False, text_dropout: float = 0.1,
                   camera_dropout: float = 0.1, weights: torch.Tensor | None = None,
                   views_per_group: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images ``[B, 3, H, W]`` in [-1, 1] (``[B, 9, H, W]`` with the ray channels after them),
    token ids ``[B, L]``, camera ``[B, 16]``; text and camera (labels and rays together) dropped.
    weights: per-render draw weights (None: uniform). views_per_group F: ``data`` is group-major
    (see :func:`generate_toyworld_dataset`) and the batch is B / F whole groups, each drawn, its
    article swapped and its caption and camera dropped as one (F = 1: the single-view draws)."""
    views = views_per_group
    groups = batch_size // views
    group = (torch.randint(len(data) // views, (groups,), generator=generator) if weights is None
             else torch.multinomial(weights[::views], groups, replacement=True, generator=generator))
    index = (group[:, None] * views + torch.arange(views)).reshape(-1)
    images = data.images[index].permute(0, 3, 1, 2).float() / 127.5 - 1

    def per_group(draw: torch.Tensor) -> torch.Tensor:
        return draw.repeat_interleave(views)

    captions = swap_articles(data.captions(index), per_group(torch.rand(groups, generator=generator) < 0.3))
    drop_text = per_group(torch.rand(groups, generator=generator) < text_dropout)
    captions = ["" if d else c for c, d in zip(captions, drop_text.tolist(), strict=True)]
    ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids
    camera = camera_condition(data.c2w[index])
    keep_camera = per_group(torch.rand(groups, generator=generator) >= camera_dropout).float()
    if with_rays:
        rays = camera_rays(data.c2w[index], images.shape[-1]) * keep_camera[:, None, None, None]
        images = torch.cat([images, rays], dim=1)
    return images, ids, camera * keep_camera[:, None]


def edit_training_batch(pairs: EditPairs, tokenizer: PreTrainedTokenizerFast, batch_size: int,
                        generator: torch.Generator, with_rays: bool = False, edit_dropout: float = 0.05,
                        camera_dropout: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An InstructPix2Pix batch: inputs ``[B, 3 (+6) + 3, H, W]`` (the target render in [-1, 1], the ray
    channels, the source render in [-1, 1]; the loop noises the first three), instruction token ids
    ``[B, L]``, camera ``[B, 16]``. Each pair drops its instruction (-> "") only, its source image
    (-> zeros) only, or both, each with probability ``edit_dropout``; its camera (labels and rays) with
    ``camera_dropout``."""
    index = torch.randint(len(pairs), (batch_size,), generator=generator)
    target = pairs.target[index].permute(0, 3, 1, 2).float() / 127.5 - 1
    source = pairs.source[index].permute(0, 3, 1, 2).float() / 127.5 - 1
    u = torch.rand(batch_size, generator=generator)
    drop_text = (u < edit_dropout) | ((u >= 2 * edit_dropout) & (u < 3 * edit_dropout))
    drop_image = (u >= edit_dropout) & (u < 3 * edit_dropout)
    instructions = ["" if d else instruction
                    for (_, instruction, _), d in zip(pairs.triples(index), drop_text.tolist(), strict=True)]
    ids = tokenizer(instructions, padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    source = source * (~drop_image).float()[:, None, None, None]
    keep_camera = (torch.rand(batch_size, generator=generator) >= camera_dropout).float()
    parts = [target]
    if with_rays:
        parts.append(camera_rays(pairs.c2w[index], target.shape[-1]) * keep_camera[:, None, None, None])
    return torch.cat([*parts, source], dim=1), ids, camera_condition(pairs.c2w[index]) * keep_camera[:, None]


def main(argv: list[str] | None = None) -> dict:
    """Train (or resume), export the model folder, return the training log."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    channels = tuple(int(c) for c in args.channels.split(","))
    t_start = time.time()
    elevation_range = tuple(args.elevation_range)
    views = args.views_per_group
    if args.edit_pairs:
        data = generate_edit_pairs(args.n_images, args.resolution, args.seed, elevation_range)
        tokenizer = build_tokenizer(EDIT_WORDS, EDIT_TEXT_LENGTH)
    else:
        data = generate_toyworld_dataset(args.n_images, args.resolution, args.seed, elevation_range, views)
        tokenizer = build_tokenizer()
    data_seconds = time.time() - t_start
    print(f"dataset: {len(data)} {'edit pairs' if args.edit_pairs else 'renders'} at {args.resolution}^2 "
          f"({len(data) // views} groups of {views}) in {data_seconds:.1f}s", flush=True)

    image_channels = IMAGE_CHANNELS if args.edit_pairs else 0
    if args.init_from is not None and not (args.resume and (args.state_dir / "state.pt").exists()):
        unet, text_encoder = load_init(args.init_from, args.camera_rays)
        channels = tuple(unet.config.block_out_channels)
        if args.edit_pairs:
            widen_for_edits(unet, text_encoder, tokenizer)
    else:
        if args.init_from is not None:  # resuming a fine-tune: the init model's widths, whatever --channels says
            init_config = json.loads((args.init_from / "unet" / "config.json").read_text())
            channels = tuple(init_config["block_out_channels"])
        text_encoder = build_text_encoder(tokenizer)
        unet = build_unet(args.resolution, channels, (9 if args.camera_rays else 3) + image_channels)
    scheduler = build_scheduler()
    # EMA of both networks: the UNet was trained against this text encoder, so they average together
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text_encoder = copy.deepcopy(text_encoder).requires_grad_(False)
    if args.freeze_text_encoder:
        text_encoder.requires_grad_(False)
    params = [p for p in (*unet.parameters(), *text_encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed + 1)
    alphas_cumprod = scheduler.alphas_cumprod
    command = command_line(argv)
    log = {"command": command, "resumes": [],
           "n_images": len(data), "resolution": args.resolution, "batch_size": args.batch_size,
           "steps_planned": args.steps, "channels": list(channels), "seed": args.seed,
           "threads": args.threads, "data_seconds": data_seconds, "losses": [], "train_seconds": 0.0,
           "camera_rays": args.camera_rays, "init_from": str(args.init_from) if args.init_from else None,
           "elevation_range": list(elevation_range), "text_dropout": args.text_dropout,
           "camera_dropout": args.camera_dropout,
           "lr": args.lr, "warmup": args.warmup, "max_weight": args.max_weight,
           "oversample": args.oversample, "high_t_fraction": args.high_t_fraction,
           "views_per_group": views, "freeze_text_encoder": args.freeze_text_encoder,
           "edit_pairs": args.edit_pairs, "edit_dropout": args.edit_dropout if args.edit_pairs else None,
           "unet_params": sum(p.numel() for p in unet.parameters()),
           "text_encoder_params": sum(p.numel() for p in text_encoder.parameters())}
    step = 0
    state_path = args.state_dir / "state.pt"
    modules = {"unet": unet, "ema_unet": ema_unet, "text_encoder": text_encoder, "ema_text_encoder": ema_text_encoder}
    if args.resume and state_path.exists():
        step, log = load_training_state(state_path, modules, optimizer, generator, command, data_seconds)

    draw_weights = None if args.edit_pairs else sampling_weights(data, args.oversample)
    base = args.init_from if args.freeze_text_encoder or args.edit_pairs else None
    attention_hooks = [MultiViewAttention(views)] if views > 1 else []
    unet.train()
    text_encoder.train(not args.freeze_text_encoder)

    def train_step(step: int) -> float:
        if args.edit_pairs:
            inputs, ids, camera = edit_training_batch(data, tokenizer, args.batch_size, generator, args.camera_rays,
                                                      args.edit_dropout, args.camera_dropout)
        else:
            inputs, ids, camera = training_batch(data, tokenizer, args.batch_size, generator, args.camera_rays,
                                                 args.text_dropout, args.camera_dropout, draw_weights, views)
        images, condition = inputs[:, :3], inputs[:, 3:]  # rays, and the source image when editing
        noise = torch.randn(images.shape, generator=generator)
        timesteps = sample_timesteps(args.batch_size // views, scheduler.config.num_train_timesteps,
                                     args.high_t_fraction, generator).repeat_interleave(views)  # one t per group
        a = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noisy = torch.cat([a.sqrt() * images + (1 - a).sqrt() * noise, condition], dim=1)
        with torch.set_grad_enabled(not args.freeze_text_encoder):
            text = text_encoder(ids).last_hidden_state
        with hooks_active(unet, attention_hooks):
            eps = unet(noisy, timesteps, encoder_hidden_states=text, class_labels=camera).sample
        weight = loss_weights(a.flatten(), args.max_weight)
        loss = (F.mse_loss(eps, noise, reduction="none").mean((1, 2, 3)) * weight).sum() / weight.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        # warm the EMA up so early checkpoints are not dominated by the random init
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        if not args.freeze_text_encoder:
            ema_update(ema_text_encoder, text_encoder, decay)
        return loss.item()

    def export(step: int) -> None:
        export_model(args.out, ema_unet, ema_text_encoder, tokenizer, scheduler, args.resolution, log,
                     elevation_range, views, base, own_text=not args.freeze_text_encoder,
                     image_channels=image_channels)
        print(f"checkpoint at step {step} -> {args.out}", flush=True)

    return training_loop(step, log, args, optimizer, generator, state_path, modules, train_step, export)


if __name__ == "__main__":
    main()
