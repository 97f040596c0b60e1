"""The training skeleton every network's stage calls (:func:`train_network`): seeding, the
backbone, augmentation, the poly schedule with learning-rate multipliers, frozen batch norm,
per-epoch checkpoints that a rerun resumes from, and the model file at the end."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from wsss.core.atomic import atomic_dir, atomic_path, save_torch, write_json
from wsss.core.errors import TrainingFailed
from wsss.core.runtime import amp_of, autocast, pick_device, progress
from wsss.core.settings import TrainIO, TrainParams
from wsss.data.datasets import Augment
from wsss.models.backbones import Backbone, build_backbone
from wsss.models.registry import save_model
from wsss.training.health import Problem, check_history, weights_problem
from wsss.training.held_out import HeldOut

log = logging.getLogger(__name__)
# Each training's history also goes to TensorBoard event files beside training.csv when the
# tensorboard package (the tensorboard extra) is installed.
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None

# What a loss function returns: the scalar loss, or the loss and its terms by name.
Loss = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """What a training stage trains, beside its files (``TrainIO``) and settings
    (``TrainParams``).

    ``build(backbone)`` makes the network around the backbone of the settings (it has
    ``backbone`` and ``new_modules()``); ``dataset(augment)`` the training set;
    ``loss(model, inputs, targets)`` the scalar loss of a batch (or the loss and its terms
    by name, each recorded per epoch as ``loss_<name>``); ``held_out()`` how its health is
    measured after every epoch (None: not measured). ``kind``, ``arch`` and ``label_names``
    go into the model file (:mod:`wsss.models.registry`). ``inputs``: files whose contents
    the training depends on besides the manifest (label maps): a rerun resumes only if they
    and the settings are unchanged. ``config_key`` (``cam.train``) names the settings in the
    advice. ``initial_loss``: the loss of the first ``initial_loss_epochs`` epochs instead of
    ``loss`` (e.g. classification only, before a mask loss joins); the rising-loss check
    reads the later epochs only, and in them the history column ``health_loss`` (a term,
    ``loss_<name>``, where the total may rightly rise: a mask loss that more images join as
    their masks improve). ``augment``: the training augmentation (None: the settings'
    rescale, flip, jitter and padded square crop).
    """

    name: str
    build: Callable[[Backbone], nn.Module]
    dataset: Callable[[Augment], Dataset]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], Loss]
    kind: str
    arch: dict
    label_names: Sequence[str]
    held_out: Callable[[], HeldOut | None] = lambda: None
    config_key: str = ""
    inputs: Sequence[Path] = ()
    initial_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], Loss] | None = None
    initial_loss_epochs: int = 0
    health_loss: str = "loss"
    augment: Augment | None = None


def train_network(spec: TrainingSpec, io: TrainIO, params: TrainParams) -> nn.Module:
    """Train one network, check its health, and write its model file; what every training
    stage calls. SGD with the backbone at the pretrained learning rates and the new modules
    at the new layers'; the backbone's batch norm frozen when ``params.freeze_bn``. The
    per-epoch history goes to ``training.csv`` and the verdict to ``health.json`` beside the
    model file ``io.out``; a rerun resumes from ``io.state_dir``. A failed health check
    raises :class:`TrainingFailed` (no model file) unless ``params.health`` is ``warn``.
    """
    set_seed(params.seed)
    device = pick_device(io.device)
    backbone = build_backbone(params.backbone, params.output_stride, params.weights)
    layout = memory_format(params, device)
    log.info(
        "%s: %s memory layout",
        spec.name,
        "channels-last" if layout == torch.channels_last else "NCHW",
    )
    model = spec.build(backbone).to(device, memory_format=layout)
    augment = spec.augment or Augment(params.crop_size, params.scale_range, True, params.jitter)
    data = spec.dataset(augment)
    stamp = fingerprint(asdict(params), Path(io.manifest), *spec.inputs)
    checkpoints = EpochCheckpoints(io.state_dir, stamp)
    if params.freeze_bn:
        freeze_batchnorm(model.backbone)
    groups = param_groups(
        [model.backbone], model.new_modules(), params.weight_decay, params.lr_multipliers
    )
    optimizer = torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)
    loader = make_loader(
        data, params.batch_size, params.num_workers, device, params.seed, params.loader_start
    )
    log.info(
        "%s: %d images, %d epochs x %d steps on %s (%d threads)",
        spec.name,
        len(data),
        params.epochs,
        len(loader),
        device,
        torch.get_num_threads(),
    )
    health = spec.held_out() if params.health != "ignore" else None
    out_dir = Path(io.out).parent

    def snapshot(history: list[dict], model: nn.Module) -> None:
        """The model file of an epoch listed in ``io.snapshots`` (learning curves)."""
        if len(history) not in io.snapshots:
            return
        path = snapshot_path(io.out, len(history))
        save_model(
            path,
            model,
            spec.kind,
            {"backbone": params.backbone, "output_stride": params.output_stride, **spec.arch},
            spec.label_names,
            fingerprint=stamp,
            epochs=len(history),
            settings=asdict(params),
            history=history,
        )
        log.info("wrote %s", path)

    history = fit(
        model,
        loader,
        optimizer,
        lambda images, targets: spec.loss(model, images, targets),
        checkpoints,
        params,
        device=device,
        name=spec.name,
        held_out=health,
        history_csv=out_dir / "training.csv",
        initial_loss_fn=(
            (lambda images, targets: spec.initial_loss(model, images, targets))
            if spec.initial_loss
            else None
        ),
        initial_loss_epochs=spec.initial_loss_epochs,
        on_epoch=lambda history: snapshot(history, model),
    )
    check_health(
        model,
        history,
        health,
        params,
        out_dir / "health.json",
        spec.name,
        spec.config_key,
        spec.initial_loss_epochs if spec.initial_loss else 0,
        spec.health_loss,
    )
    save_model(
        io.out,
        model.cpu(),
        spec.kind,
        {"backbone": params.backbone, "output_stride": params.output_stride, **spec.arch},
        spec.label_names,
        fingerprint=stamp,
        epochs=params.epochs,
        settings=asdict(params),
        history=history,
    )
    log.info("wrote %s", io.out)
    return model


def snapshot_path(out: str | os.PathLike[str], epoch: int) -> Path:
    """Where the model file of epoch ``epoch`` goes beside ``out``: model-epoch3.pt."""
    out = Path(out)
    return out.with_name(f"{out.stem}-epoch{epoch}{out.suffix}")


def check_health(
    model: nn.Module | None,
    history: list[dict],
    held_out: HeldOut | None,
    params: TrainParams,
    out: Path,
    name: str,
    config_key: str,
    initial_loss_epochs: int = 0,
    loss_column: str = "loss",
) -> list[Problem]:
    """Judge a finished training (write ``out``, JSON); raise :class:`TrainingFailed` on a
    problem when ``params.health`` is ``stop``, else log it as a warning. The loss checked
    is the history column ``loss_column``, except in the first ``initial_loss_epochs``
    epochs (another loss)."""
    losses = [row[loss_column] for row in history[initial_loss_epochs:]]
    checked = history[initial_loss_epochs:]
    start = checked[0].get("first_step_loss") if checked else None  # the untrained loss
    problems = []
    if held_out is not None:
        scores = [row[held_out.metric] for row in history if held_out.metric in row]
        problems = check_history(
            losses,
            scores,
            held_out.prior,
            metric=held_out.metric,
            margin=params.health_margin,
            prior_name=held_out.prior_name,
            advice_prefix=config_key,
            start_loss=start,
            lr=params.lr,
        )
        model.eval()
        with torch.no_grad():
            problems += held_out.final_checks(model)
    else:
        problems = check_history(
            losses, None, None, advice_prefix=config_key, start_loss=start, lr=params.lr
        )
    if model is not None:  # None: judge the history alone
        weights = model.state_dict().items()
        bad = [k for k, v in weights if v.is_floating_point() and not v.isfinite().all()]
        problems += weights_problem(bad, config_key)
    verdict = {
        "network": name,
        "healthy": not problems,
        "metric": held_out.metric if held_out else None,
        "final": history[-1].get(held_out.metric) if held_out and history else None,
        "prior": held_out.prior if held_out else None,
        "prior_name": held_out.prior_name if held_out else None,
        "final_loss": history[-1]["loss"] if history else None,
        "problems": [asdict(p) for p in problems],
    }
    write_json(out, verdict)
    for problem in problems:
        log.warning("%s: %s", name, problem)
    if problems and params.health == "stop":
        raise TrainingFailed(
            f"{name} failed its health checks (details in {out}; "
            f"set {config_key or 'train'}.health: warn to keep the model anyway):\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return problems


def channels_last_pays(device: torch.device) -> bool:
    """Whether convolutions run faster in channels-last on ``device``: on CUDA, and on a
    CPU whose torch kernels use AVX-512 (a demo CAM step 1.22x faster there); with AVX2
    kernels it is 1.28x slower (docs/benchmarks.md, "Speed")."""
    if device.type == "cpu":
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return device.type == "cuda"


def memory_format(params: TrainParams, device: torch.device) -> torch.memory_format:
    """The layout of a training's weights and image batches: channels-last (N, H, W, C in
    memory) when ``params.channels_last`` and :func:`channels_last_pays` on ``device``,
    else torch's default (NCHW)."""
    if params.channels_last and channels_last_pays(device):
        return torch.channels_last
    return torch.contiguous_format


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm of ``module`` in eval mode with frozen affine parameters."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def param_groups(
    pretrained: Iterable[nn.Module],
    new: Iterable[nn.Module],
    weight_decay: float,
    multipliers: tuple[float, float, float, float] = (1.0, 2.0, 10.0, 20.0),
) -> list[dict]:
    """Four SGD groups with the reference learning-rate multipliers.

    pretrained weights x m0, pretrained biases x m1, new weights x m2, new biases x m3;
    biases (and 1-d parameters such as BN affines) get no weight decay.
    """
    groups: list[dict] = []
    for modules, (m_w, m_b) in ((pretrained, multipliers[:2]), (new, multipliers[2:])):
        weights, biases = [], []
        for module in modules:
            for p in module.parameters():
                if p.requires_grad:
                    (weights if p.ndim > 1 else biases).append(p)
        groups.append({"params": weights, "lr_mult": m_w, "weight_decay": weight_decay})
        groups.append({"params": biases, "lr_mult": m_b, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def set_poly_lr(
    optimizer: torch.optim.Optimizer,
    base_lr: float,
    step: int,
    max_steps: int,
    power: float = 0.9,
    warmup_steps: int = 0,
) -> float:
    """lr = base_lr * (1 - step / max_steps) ** power, times each group's ``lr_mult``; over
    the first ``warmup_steps`` steps also times (step + 1) / warmup_steps (linear warm-up)."""
    lr = base_lr * (1.0 - min(step, max_steps) / max_steps) ** power
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr


def fingerprint(*parts: object) -> str:
    """A short hash of JSON-serialisable parts (settings) and file contents (paths)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            digest.update(part.read_bytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class EpochCheckpoints:
    """Per-epoch training state in ``state_dir`` so that an interrupted run resumes.

    ``state_dir/last.pt`` holds model, optimizer, the number of finished epochs and their
    history (JSON), and the fingerprint of the settings; a state whose fingerprint differs
    is not resumed.
    """

    def __init__(self, state_dir: str | os.PathLike[str], fingerprint: str):
        self.path = Path(state_dir) / "last.pt"
        self.fingerprint = fingerprint

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[dict]:
        """Load the last state if it matches; returns the history of the finished epochs
        (one dict per epoch; empty: start from scratch)."""
        if not self.path.exists():
            return []
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it was written with other settings", self.path)
            return []
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        history = json.loads(state.get("history", "[]"))
        return history if len(history) == int(state["epoch"]) else [{}] * int(state["epoch"])

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, history: list[dict]) -> None:
        """Record that ``len(history)`` epochs are finished (atomic write)."""
        save_torch(
            self.path,
            {
                "fingerprint": self.fingerprint,
                "epoch": len(history),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": json.dumps(history),
            },
        )


def fit(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Loss],
    checkpoints: EpochCheckpoints,
    params: TrainParams,
    *,
    device: torch.device,
    name: str = "train",
    held_out: HeldOut | None = None,
    history_csv: Path | None = None,
    initial_loss_fn: Callable[[torch.Tensor, torch.Tensor], Loss] | None = None,
    initial_loss_epochs: int = 0,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """The epoch loop every training shares; returns the per-epoch history.

    Resumes after the last finished epoch recorded by ``checkpoints``. Per step: the poly
    learning rate (after a linear warm-up of ``params.warmup_epochs``), ``loss_fn(inputs,
    targets)`` (on ``device``, under autocast when ``params.amp``: ``params.amp_dtype``,
    float16 with a scaled loss, with torch's global
    generator seeded from (seed, step) so that sampling inside a loss is the same in a
    resumed run), gradients clipped to
    the norm ``params.clip_norm`` (0: not clipped), an SGD step; a loss that is not finite
    stops the training at once (:class:`TrainingFailed`). Per epoch: the mean loss, the
    learning rate, the mean gradient norm, seconds (``data_seconds`` of them spent waiting
    for the loader's batches) and images per second, and the
    ``held_out`` scores go into the history (and ``history_csv``), and the state is saved.
    The first ``initial_loss_epochs`` epochs train ``initial_loss_fn`` instead, when given.
    ``on_epoch(history)`` is called after each epoch's state is saved.
    The loader's dataset must be :class:`EpochSeeded`-like (an ``epoch`` attribute) and
    its generator is reseeded per epoch, so a resumed run sees the same batches as an
    uninterrupted one.
    """
    steps_per_epoch = len(loader)
    max_steps = params.epochs * steps_per_epoch
    warmup = round(params.warmup_epochs * steps_per_epoch)
    frozen = model.backbone if params.freeze_bn else None
    history = checkpoints.resume(model, optimizer)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    layout = memory_format(params, device)
    # float16 autocast (GPUs without bfloat16) scales the loss so that small gradients do
    # not underflow; with bfloat16, float32 or on the CPU the scaler does nothing.
    scaler = torch.amp.GradScaler(
        device.type, enabled=amp_of(params) == "float16" and device.type == "cuda"
    )
    for epoch in range(len(history), params.epochs):
        model.train()
        if frozen is not None:
            freeze_batchnorm(frozen)
        loader.dataset.epoch = epoch
        loader.generator.manual_seed(params.seed + epoch)
        total, seen, norms, start = 0.0, 0, [], time.perf_counter()
        waited, asked = 0.0, start  # time spent waiting for the loader's batches
        term_totals: dict[str, float] = {}
        epoch_loss = initial_loss_fn if initial_loss_fn and epoch < initial_loss_epochs else loss_fn
        bar = progress(loader, f"{name} epoch {epoch + 1}/{params.epochs}", "batch")
        for step, (inputs, targets) in enumerate(bar):
            waited += time.perf_counter() - asked
            lr = set_poly_lr(
                optimizer,
                params.lr,
                epoch * steps_per_epoch + step,
                max_steps,
                params.poly_power,
                warmup,
            )
            inputs = inputs.to(device, non_blocking=True)
            if inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=layout)
            targets = targets.to(device, non_blocking=True)
            torch.manual_seed(params.seed * 1_000_003 + epoch * steps_per_epoch + step)
            with autocast(device, amp_of(params)):
                loss, terms = split_terms(epoch_loss(inputs, targets))
            if not torch.isfinite(loss):
                raise TrainingFailed(
                    f"{name}: the loss became {loss.item()} at epoch {epoch + 1}, step "
                    f"{step + 1}. Try: a lower learning rate (lr), a longer warm-up "
                    "(warmup_epochs) or gradient clipping (clip_norm)"
                )
            if step == 0:
                first_step_loss = float(loss.detach())  # the health check's reference
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients
            norm = torch.nn.utils.clip_grad_norm_(trained, params.clip_norm or float("inf"))
            norms.append(float(norm))
            scaler.step(optimizer)  # skipped when a float16 gradient overflowed
            scaler.update()
            total += loss.item() * len(inputs)
            for key, value in terms.items():
                term_totals[key] = term_totals.get(key, 0.0) + float(value.detach()) * len(inputs)
            seen += len(inputs)
            bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{lr:.2e}", refresh=False)
            asked = time.perf_counter()
        seconds = time.perf_counter() - start
        row = {
            "epoch": epoch + 1,
            "loss": round(total / max(seen, 1), 6),
            **{f"loss_{k}": round(v / max(seen, 1), 6) for k, v in term_totals.items()},
            "lr": lr,
            "grad_norm": round(float(np.mean(norms)), 4),
            "seconds": round(seconds, 1),
            "data_seconds": round(waited, 1),
            "images_per_s": round(seen / max(seconds, 1e-9), 2),
            "first_step_loss": round(first_step_loss, 6),
        }
        if held_out is not None:
            model.eval()
            with torch.no_grad():
                row.update(held_out.measure(model))
            row[f"{held_out.metric}_prior"] = held_out.prior
        history.append(row)
        log.info(
            "%s epoch %d/%d: %s",
            name,
            epoch + 1,
            params.epochs,
            ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"),
        )
        checkpoints.save(model, optimizer, history)
        if history_csv is not None:
            write_history(history_csv, history)
            if TENSORBOARD:
                write_tensorboard(history_csv.with_name("tensorboard"), history, name)
        if on_epoch is not None:
            on_epoch(history)
    return history


def split_terms(out: Loss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loss function's result as (loss, terms); a bare loss has no terms."""
    return out if isinstance(out, tuple) else (out, {})


def write_history(path: Path, history: list[dict]) -> None:
    """The per-epoch history as CSV (one row per epoch; columns of every row), atomically."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(history)


def write_tensorboard(directory: Path, history: list[dict], name: str) -> None:
    """The per-epoch history as TensorBoard scalars ``<name>/<column>`` at step = epoch, in
    ``directory``, rewritten whole after every epoch (so a resumed or restarted training
    leaves no stale points). ``tensorboard --logdir results/`` shows every training."""
    from torch.utils.tensorboard import SummaryWriter

    with atomic_dir(directory) as tmp:
        writer = SummaryWriter(log_dir=str(tmp))
        for row in history:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and np.isfinite(value):
                    writer.add_scalar(f"{name}/{key}", value, int(row["epoch"]))
        writer.close()


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    seed: int,
    start: str = "forkserver",
) -> torch.utils.data.DataLoader:
    """A shuffling loader with its own seeded generator (reseeded per epoch by :func:`fit`).

    Its workers start anew each epoch (so that they see the dataset's ``epoch``), by
    ``start``: ``forkserver`` forks them from a server process that has torch and the
    datasets loaded; ``fork`` forks the training process itself, whose memory (about 2 GB
    for a demo training) the two then share copy-on-write, so that the training copies
    every page it writes in the next steps, each epoch again (docs/benchmarks.md,
    "Speed"). Both give the same batches: the augmentation depends on (seed, epoch,
    index) alone."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset) > batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        multiprocessing_context=worker_start(start) if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


# What the forkserver imports once, so that a worker forked from it starts at once.
WORKER_PRELOAD = ["torch", "wsss.data.datasets"]


def worker_start(method: str) -> multiprocessing.context.BaseContext:
    """The multiprocessing context loader workers start with (see :func:`make_loader`)."""
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(WORKER_PRELOAD)
    return context
