"""The training skeleton every network's stage calls (:func:`train_network`): seeding, the
backbone, augmentation, the poly schedule with learning-rate multipliers, frozen batch norm,
per-epoch checkpoints that a rerun resumes from, and the model file at the end."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from wsss.atomic import save_torch
from wsss.common import autocast, pick_device, progress
from wsss.data.datasets import Augment
from wsss.models.backbones import Backbone, build_backbone
from wsss.models.registry import save_model
from wsss.settings import TrainIO, TrainParams

log = logging.getLogger(__name__)


def train(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: TrainParams,
    checkpoints: EpochCheckpoints,
    device: torch.device,
    name: str,
) -> None:
    """Train ``model`` (already on ``device``) with SGD: its ``backbone`` at the pretrained
    learning rates, its ``new_modules()`` at the new layers'; the backbone's batch norm
    frozen when ``params.freeze_bn``; see :func:`fit` for the loop."""
    pretrained = model.backbone
    if params.freeze_bn:
        freeze_batchnorm(pretrained)
    groups = param_groups(
        [pretrained], model.new_modules(), params.weight_decay, params.lr_multipliers
    )
    optimizer = torch.optim.SGD(groups, lr=params.lr, momentum=params.momentum)
    loader = make_loader(dataset, params.batch_size, params.num_workers, device, params.seed)
    log.info(
        "%s: %d images, %d epochs x %d steps on %s (%d threads)",
        name,
        len(dataset),
        params.epochs,
        len(loader),
        device,
        torch.get_num_threads(),
    )
    fit(
        model,
        loader,
        optimizer,
        loss_fn,
        checkpoints,
        epochs=params.epochs,
        base_lr=params.lr,
        poly_power=params.poly_power,
        device=device,
        amp=params.amp,
        seed=params.seed,
        frozen_bn=pretrained if params.freeze_bn else None,
        name=name,
    )


def train_network(
    name: str,
    io: TrainIO,
    params: TrainParams,
    *,
    build: Callable[[Backbone], nn.Module],
    dataset: Callable[[Augment], Dataset],
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    kind: str,
    arch: dict,
    label_names: Sequence[str],
    inputs: Sequence[Path] = (),
) -> nn.Module:
    """Train one network and write its model file; what every training stage calls.

    ``build(backbone)`` makes the network around the backbone of ``params`` (it has
    ``backbone`` and ``new_modules()``); ``dataset(augment)`` the training set;
    ``loss(model, inputs, targets)`` the scalar loss of a batch. ``inputs``: files whose
    contents the training depends on besides the manifest (label maps): a rerun resumes
    from ``state_dir`` only if they and the settings are unchanged. ``kind``, ``arch`` and
    ``label_names`` go into the model file ``io.out`` (:mod:`wsss.models.registry`).
    """
    set_seed(params.seed)
    torch_device = pick_device(io.device)
    backbone = build_backbone(params.backbone, params.output_stride, params.weights)
    model = build(backbone).to(torch_device)
    data = dataset(Augment(params.crop_size, params.scale_range, True, params.jitter))
    stamp = fingerprint(asdict(params), Path(io.manifest), *inputs)
    checkpoints = EpochCheckpoints(io.state_dir, stamp)

    def loss_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(model, images, targets)

    train(model, data, loss_fn, params, checkpoints, torch_device, name)
    arch = {"backbone": params.backbone, "output_stride": params.output_stride, **arch}
    save_model(
        io.out,
        model.cpu(),
        kind,
        arch,
        label_names,
        fingerprint=stamp,
        epochs=params.epochs,
        settings=asdict(params),
    )
    log.info("wrote %s", io.out)
    return model


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
    optimizer: torch.optim.Optimizer, base_lr: float, step: int, max_steps: int, power: float = 0.9
) -> float:
    """lr = base_lr * (1 - step / max_steps) ** power, times each group's ``lr_mult``."""
    lr = base_lr * (1.0 - min(step, max_steps) / max_steps) ** power
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

    ``state_dir/last.pt`` holds model, optimizer and the number of finished epochs, and the
    fingerprint of the settings; a state whose fingerprint differs is not resumed.
    """

    def __init__(self, state_dir: str | os.PathLike[str], fingerprint: str):
        self.path = Path(state_dir) / "last.pt"
        self.fingerprint = fingerprint

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load the last state if it matches; returns the number of finished epochs."""
        if not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            log.info("ignoring %s: it was written with other settings", self.path)
            return 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log.info("resuming from %s after epoch %d", self.path, state["epoch"])
        return int(state["epoch"])

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Record that ``epoch`` epochs are finished (atomic write)."""
        save_torch(
            self.path,
            {
                "fingerprint": self.fingerprint,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
        )


def fit(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    checkpoints: EpochCheckpoints,
    *,
    epochs: int,
    base_lr: float,
    poly_power: float,
    device: torch.device,
    amp: bool,
    seed: int,
    frozen_bn: nn.Module | None = None,
    name: str = "train",
) -> None:
    """The epoch loop every training stage shares.

    Resumes after the last finished epoch recorded by ``checkpoints``; per step sets the
    poly learning rate, computes ``loss_fn(inputs, targets)`` (inputs and targets already on
    ``device``, under autocast when ``amp``), steps the optimizer; per epoch logs the mean
    loss and saves the state. The loader's dataset must be :class:`EpochSeeded`-like (an
    ``epoch`` attribute) and its generator is reseeded per epoch, so that a resumed run
    sees the same batches as an uninterrupted one.
    """
    steps_per_epoch = len(loader)
    max_steps = epochs * steps_per_epoch
    start = checkpoints.resume(model, optimizer)
    for epoch in range(start, epochs):
        model.train()
        if frozen_bn is not None:
            freeze_batchnorm(frozen_bn)
        loader.dataset.epoch = epoch
        loader.generator.manual_seed(seed + epoch)
        total, seen = 0.0, 0
        bar = progress(loader, f"{name} epoch {epoch + 1}/{epochs}", "batch")
        for step, (inputs, targets) in enumerate(bar):
            lr = set_poly_lr(
                optimizer, base_lr, epoch * steps_per_epoch + step, max_steps, poly_power
            )
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp):
                loss = loss_fn(inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(inputs)
            seen += len(inputs)
            bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{lr:.2e}", refresh=False)
        log.info("%s epoch %d/%d: loss %.4f", name, epoch + 1, epochs, total / max(seen, 1))
        checkpoints.save(model, optimizer, epoch + 1)


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    seed: int,
) -> torch.utils.data.DataLoader:
    """A shuffling loader with its own seeded generator (reseeded per epoch by :func:`fit`)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(dataset) > batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
