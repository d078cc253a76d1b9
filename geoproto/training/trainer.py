"""Episodic training (the paper's eq. 4, optionally PANet's prototype alignment), resumable exactly.

Each iteration: encode the support crops, build one prototype per episode class plus background
(eq. 1), match the query crops (eq. 2-3) and minimise the pixel cross-entropy (eq. 4). BatchNorm
statistics stay frozen (episodes are small and unlike ImageNet batches) and so do the layers before the
stride-8 stage. A run writes to its output folder:

- ``state.pt``: weights, optimiser, scheduler and iteration, for ``--resume`` (episodes depend only on
  the seed and the iteration, so a resumed run continues exactly);
- ``model.pt``: the final encoder and ``best.pt``: the best by validation, both in the checkpoint format
  ``segment --checkpoint`` reads, with the training command, data and seed in their metadata;
- ``log.jsonl``: one line per logged iteration (loss, learning rate) and per validation.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from ..progress import progress_bar

from ..errors import GeoprotoError
from ..classifier import Classifier
from ..fewshot import DEFAULT_ALPHA, masked_average_prototypes
from ..models import DEFAULT_BACKBONE, Encoder, build_encoder, save_checkpoint
from ..models.checkpoint import safe_load
from ..models.runtime import resolve_device, window_features
from ..output import same_file
from ..validation import ALPHA_RANGE, MAX_WORKERS, check_memory, check_number
from .episodes import EpisodeSampler

VALIDATION_SEED_OFFSET = 1_000_003
RUN_FILES = ("state.pt", "model.pt", "best.pt", "log.jsonl")
# Rough bytes per crop pixel a training step holds: activations kept for the backward pass and their
# gradients (to refuse a crop and episode size that cannot fit before training starts).
TRAIN_BYTES_PER_PIXEL = 1024


@dataclass
class TrainConfig:
    backbone: str = DEFAULT_BACKBONE
    init_weights: str | None = None
    head: bool = False
    ways: int = 1
    shots: int = 5
    queries: int = 1
    crop: int = 417
    iterations: int = 1000
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list[int] = field(default_factory=list)  # default: 1/3 and 2/3 of the run, as PANet
    lr_gamma: float = 0.1
    alpha: float = DEFAULT_ALPHA
    align: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    val_every: int = 250
    val_episodes: int = 20
    log_every: int = 10
    workers: int = 2
    device: str = "auto"

    def __post_init__(self):
        """A NaN or absurd setting would train for hours and write a checkpoint of NaN weights."""
        for name, (low, high, min_open) in TRAIN_RANGES.items():
            integer = isinstance(getattr(TrainConfig, name), int)
            setattr(self, name, check_number(name, getattr(self, name), low, high, min_open, integer))
        self.lr_milestones = [check_number("lr_milestones", m, 1, integer=True) for m in self.lr_milestones]


# Bounds (low, high, low excluded) of every numeric setting; the CLI's options use the same.
TRAIN_RANGES = {
    "ways": (1, 254, False), "shots": (1, 1000, False), "queries": (1, 1000, False), "crop": (32, 8192, False),
    "iterations": (1, None, False), "lr": (0, 10, True), "momentum": (0, 1, False),
    "weight_decay": (0, 1, False), "lr_gamma": (0, 1, True), "alpha": ALPHA_RANGE,
    "seed": (0, 2 ** 32 - 1, False), "checkpoint_every": (1, None, False), "val_every": (1, None, False),
    "val_episodes": (1, None, False), "log_every": (1, None, False), "workers": (0, MAX_WORKERS, False),
}


def episode_logits(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                   size: tuple[int, int], num_classes: int, alpha: float) -> torch.Tensor:
    """Eq. 1-2 within an episode: prototypes from the support features, query logits at pixel size."""
    classifier = Classifier(masked_average_prototypes(support.float(), support_labels, num_classes), alpha=alpha)
    return classifier.score_features(query, size)


def episode_loss(encoder: Encoder, batch: dict, num_classes: int, alpha: float, align: bool) -> torch.Tensor:
    """Eq. 4 on the queries, plus PANet's alignment loss (supports segmented by query prototypes)."""
    support = window_features(encoder, batch["support_images"])
    query = window_features(encoder, batch["query_images"])
    logits = episode_logits(support, batch["support_labels"], query, batch["query_labels"].shape[-2:],
                            num_classes, alpha)
    loss = F.cross_entropy(logits, batch["query_labels"] - 1, ignore_index=-1)
    if align:
        predicted = logits.argmax(1).detach() + 1
        predicted[batch["query_labels"] == 0] = 0
        support_logits = episode_logits(query, predicted, support, batch["support_labels"].shape[-2:],
                                        num_classes, alpha)
        loss = loss + F.cross_entropy(support_logits, batch["support_labels"] - 1, ignore_index=-1)
    return loss


def _freeze(encoder: Encoder) -> list[torch.nn.Parameter]:
    """Freeze BatchNorm and the early layers; returns the parameters left to train."""
    for name, parameter in encoder.trunk.named_parameters():
        if name.startswith(encoder.trunk.frozen_prefixes):
            parameter.requires_grad_(False)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    return [p for p in encoder.parameters() if p.requires_grad]


class _Episodes(torch.utils.data.Dataset):
    def __init__(self, sampler: EpisodeSampler, offset: int = 0):
        self.sampler, self.offset = sampler, offset

    def __len__(self):
        return 1 << 30

    def __getitem__(self, index: int) -> dict:
        return {k: torch.from_numpy(v) for k, v in self.sampler.episode(self.offset + index).items()}


def _loader(sampler: EpisodeSampler, start: int, stop: int, workers: int, offset: int = 0):
    return torch.utils.data.DataLoader(_Episodes(sampler, offset), batch_size=None, sampler=range(start, stop),
                                       num_workers=workers, persistent_workers=False,
                                       pin_memory=torch.cuda.is_available())


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def validate(encoder: Encoder, sampler: EpisodeSampler, config: TrainConfig, device: torch.device) -> dict:
    """Mean foreground IoU and pixel accuracy over fixed validation episodes (same episodes every time)."""
    encoder.eval()
    num_classes = config.ways + 1
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for batch in _loader(sampler, 0, config.val_episodes, config.workers, VALIDATION_SEED_OFFSET):
        batch = _to(batch, device)
        logits = episode_logits(window_features(encoder, batch["support_images"]), batch["support_labels"],
                                window_features(encoder, batch["query_images"]), batch["query_labels"].shape[-2:],
                                num_classes, config.alpha)
        truth, predicted = batch["query_labels"] - 1, logits.argmax(1)
        keep = truth >= 0
        confusion += torch.bincount(truth[keep] * num_classes + predicted[keep],
                                    minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()
    encoder.train()
    _set_bn_eval(encoder)
    diagonal = confusion.diag().double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    iou = diagonal[1:] / union[1:].clamp(min=1)
    return {"val_miou": float(iou.mean()), "val_accuracy": float(diagonal.sum() / confusion.sum().clamp(min=1))}


def _set_bn_eval(encoder: Encoder) -> None:
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


def check_run_folder(config: TrainConfig, output: str, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Refuse a run ``train`` would refuse, from its settings alone (before a dataset is read: that can take
    minutes): an episode too large for memory, trunk weights that are the run's own, and a folder holding a
    run unless continued (``resume``) or started again (``overwrite``). Returns the run files it holds."""
    images = config.ways * config.shots + config.queries
    check_memory(images * config.crop ** 2 * TRAIN_BYTES_PER_PIXEL, f"{config.crop} px crops of {images} images "
                 f"per episode", "choose a smaller crop, or fewer shots or queries", param="crop")
    for name in RUN_FILES:
        if config.init_weights and same_file(os.path.join(output, name), config.init_weights):
            raise GeoprotoError(f"{config.init_weights}: is the run's own {name}, which training replaces; copy it "
                                f"elsewhere or choose another run folder", param="init_weights")
    if resume and overwrite:
        raise GeoprotoError("continues the run, overwrite starts it again: give one", param="resume",
                            mentions=("overwrite",))
    existing = [name for name in RUN_FILES if os.path.lexists(os.path.join(output, name))]
    if existing and not resume and not overwrite:
        raise GeoprotoError(f"{output}: holds a training run ({', '.join(existing)}); continue it with resume, "
                            f"or allow overwrite to start again", param="output", mentions=("resume", "overwrite"))
    return existing


def train(train_sampler: EpisodeSampler, val_sampler: EpisodeSampler | None, config: TrainConfig, output: str,
          resume: bool = False, metadata: dict | None = None, progress: bool | None = None,
          overwrite: bool = False) -> dict:
    """Run (or resume) episodic training into the folder ``output``; returns a summary. A folder holding
    a run is continued with ``resume`` or started again with ``overwrite`` (its files removed first),
    never replaced otherwise: its checkpoints may be days of training (``check_run_folder``)."""
    existing = check_run_folder(config, output, resume, overwrite)
    if not resume:
        for name in existing:  # a stale best.pt or log lines of the old run must not pass for the new one's
            os.remove(os.path.join(output, name))
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as exc:
        raise GeoprotoError(f"{output}: cannot create the run folder ({exc.strerror})") from None
    state_path = os.path.join(output, "state.pt")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    encoder, _ = build_encoder(config.backbone, init_weights=config.init_weights, with_head=config.head)
    parameters = _freeze(encoder)
    encoder.to(device).train()
    _set_bn_eval(encoder)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    milestones = config.lr_milestones or [config.iterations // 3, 2 * config.iterations // 3]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, config.lr_gamma)
    start, best = 0, {"val_miou": -1.0}
    if resume:
        if not os.path.isfile(state_path):
            raise GeoprotoError(f"{state_path}: nothing to resume")
        state = safe_load(state_path)
        if not isinstance(state, dict):
            raise GeoprotoError(f"{state_path}: not a training state (nothing to resume)")
        if state.get("config") != _comparable(config):
            raise GeoprotoError(f"{state_path}: was written with other settings; resume with the same options")
        try:
            encoder.load_state_dict(state["encoder"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, best = int(state["iteration"]), dict(state["best"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise GeoprotoError(f"{state_path}: damaged training state ({str(exc).splitlines()[0][:200]})") from None
    metadata = {**(metadata or {}), "config": asdict(config)}
    num_classes = config.ways + 1
    log = open(os.path.join(output, "log.jsonl"), "a", encoding="utf-8")
    started = time.perf_counter()
    running = None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    try:
        with progress_bar(progress, config.iterations, "episode", "train", initial=start) as bar:
            for iteration, batch in enumerate(_loader(train_sampler, start, config.iterations, config.workers),
                                              start=start + 1):
                batch = _to(batch, device)
                with autocast:
                    loss = episode_loss(encoder, batch, num_classes, config.alpha, config.align)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                running = value if running is None else 0.9 * running + 0.1 * value
                bar.set_postfix(loss=f"{running:.3f}")
                bar.update(1)
                if iteration % config.log_every == 0 or iteration == config.iterations:
                    _write(log, {"iteration": iteration, "loss": value, "running_loss": running,
                                 "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - started})
                if val_sampler is not None and (iteration % config.val_every == 0 or iteration == config.iterations):
                    scores = validate(encoder, val_sampler, config, device)
                    _write(log, {"iteration": iteration, **scores})
                    if scores["val_miou"] > best["val_miou"]:
                        best = {"iteration": iteration, **scores}
                        save_checkpoint(encoder, os.path.join(output, "best.pt"), {**metadata, "validation": best})
                if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
                    _save_state(state_path, encoder, optimizer, scheduler, iteration, best, config)
    finally:
        log.close()
    save_checkpoint(encoder, os.path.join(output, "model.pt"), {**metadata, "iterations": config.iterations})
    seconds = time.perf_counter() - started
    done = config.iterations - start
    return {"output": output, "iterations": config.iterations, "resumed_from": start, "seconds": round(seconds, 2),
            "seconds_per_iteration": round(seconds / max(done, 1), 4), "device": device.type,
            "final_running_loss": running, "best": best if best["val_miou"] >= 0 else None}


def _comparable(config: TrainConfig) -> dict:
    """The settings that must match for a resume to continue the same run."""
    keep = asdict(config)
    for name in ("workers", "device", "checkpoint_every", "log_every"):
        keep.pop(name)
    return keep


def _save_state(path, encoder, optimizer, scheduler, iteration, best, config) -> None:
    temporary = f"{path}.tmp"
    torch.save({"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "iteration": iteration, "best": best,
                "config": _comparable(config)}, temporary)
    os.replace(temporary, path)


def _write(log, record: dict) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
