"""Poly schedule, learning-rate multipliers, frozen BN and per-epoch checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from wsss.training.loop import EpochCheckpoints, freeze_batchnorm, param_groups, set_poly_lr


def small_net() -> tuple[nn.Module, nn.Module]:
    pretrained = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    new = nn.Conv2d(4, 2, 1)
    return pretrained, new


def test_param_groups_and_poly_lr() -> None:
    pretrained, new = small_net()
    groups = param_groups([pretrained], [new], weight_decay=5e-4)
    assert [g["lr_mult"] for g in groups] == [1.0, 2.0, 10.0, 20.0]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert len(groups[1]["params"]) == 3  # conv bias + BN weight and bias
    opt = torch.optim.SGD(groups, lr=0.1)
    assert set_poly_lr(opt, 0.01, 0, 100) == pytest.approx(0.01)
    lr = set_poly_lr(opt, 0.01, 50, 100, power=0.9)
    assert lr == pytest.approx(0.01 * 0.5**0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lr, 2 * lr, 10 * lr, 20 * lr])
    assert set_poly_lr(opt, 0.01, 100, 100) == 0.0
    # Linear warm-up over the first 10 steps, then the poly schedule alone.
    assert set_poly_lr(opt, 0.01, 0, 100, warmup_steps=10) == pytest.approx(0.001)
    assert set_poly_lr(opt, 0.01, 4, 100, warmup_steps=10) == pytest.approx(0.01 * 0.96**0.9 * 0.5)
    assert set_poly_lr(opt, 0.01, 10, 100, warmup_steps=10) == pytest.approx(0.01 * 0.9**0.9)


def test_frozen_batchnorm_keeps_statistics() -> None:
    pretrained, _ = small_net()
    pretrained.train()
    freeze_batchnorm(pretrained)
    bn = pretrained[1]
    before = bn.running_mean.clone()
    pretrained(torch.randn(2, 3, 8, 8) + 5)
    assert torch.equal(bn.running_mean, before)
    assert not bn.weight.requires_grad
    assert sum(len(g["params"]) for g in param_groups([pretrained], [], 0.0)) == 2  # conv only


def test_checkpoints_resume_only_matching_settings(tmp_path: Path) -> None:
    pretrained, new = small_net()
    model = nn.Sequential(pretrained, new)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    opt.step()
    history = [{"epoch": e, "loss": 1.0 / e} for e in (1, 2, 3)]
    EpochCheckpoints(tmp_path, "abc").save(model, opt, history)

    fresh = nn.Sequential(*small_net())
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    assert EpochCheckpoints(tmp_path, "other").resume(fresh, fresh_opt) == []
    assert EpochCheckpoints(tmp_path, "abc").resume(fresh, fresh_opt) == history
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"]  # momentum buffers restored
    assert EpochCheckpoints(tmp_path / "none", "abc").resume(fresh, fresh_opt) == []


# ---- mixed precision: bfloat16, or float16 with a scaled loss for GPUs without bfloat16 ----


def test_amp_settings_name_the_autocast_type() -> None:
    from wsss.core.runtime import amp_of, autocast
    from wsss.core.settings import TrainParams

    assert amp_of(TrainParams()) == "bfloat16"
    assert amp_of(TrainParams(amp_dtype="float16")) == "float16"
    assert amp_of(TrainParams(amp=False, amp_dtype="float16")) is False
    cuda = torch.device("cuda")  # the context is only built here, not entered
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without CUDA torch warns that it disables it
        assert autocast(cuda, "float16").fast_dtype == torch.float16
        assert autocast(cuda, True).fast_dtype == torch.bfloat16
        assert not autocast(cuda, False)._enabled
    assert not autocast(torch.device("cpu"), "float16")._enabled  # the CPU runs float32
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        autocast(cuda, "float8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_cuda_step_under_each_autocast_type_trains(dtype: str) -> None:
    """One layer, eight steps on the GPU: the loss falls under either type (float16 with
    its loss scaler)."""
    from wsss.core.runtime import autocast

    torch.manual_seed(0)
    device = torch.device("cuda")
    layer = nn.Linear(16, 1).to(device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16")
    inputs, targets = torch.randn(64, 16, device=device), torch.randn(64, 1, device=device)
    losses = []
    for _ in range(8):
        with autocast(device, dtype):
            loss = nn.functional.mse_loss(layer(inputs).float(), targets)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# ---- the epoch loop's own timing ----


class SlowImages(torch.utils.data.Dataset):
    """Four random images, each taking ``delay`` seconds to load; an ``epoch`` attribute
    as the loop expects of its datasets."""

    def __init__(self, delay: float) -> None:
        self.delay, self.epoch = delay, 0

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import time

        time.sleep(self.delay)
        return torch.rand(3, 8, 8), torch.tensor(index % 2, dtype=torch.float32)


def test_the_history_records_the_time_spent_waiting_for_the_loader(tmp_path: Path) -> None:
    from wsss.core.settings import TrainParams
    from wsss.training.loop import fit, make_loader

    def history(delay: float) -> list[dict]:
        model = nn.Sequential(nn.Conv2d(3, 1, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(0))
        loader = make_loader(SlowImages(delay), 2, 0, torch.device("cpu"), seed=0)
        return fit(
            model,
            loader,
            torch.optim.SGD(model.parameters(), lr=0.1),
            lambda x, y: nn.functional.binary_cross_entropy_with_logits(model(x), y),
            EpochCheckpoints(tmp_path / f"state-{delay}", "abc"),
            TrainParams(epochs=2, health="ignore", freeze_bn=False),
            device=torch.device("cpu"),
        )

    # 4 images of 0.1 s each per epoch, loaded in the loop's process: at least 0.4 s waited
    for row in history(0.1):
        assert 0.4 <= row["data_seconds"] <= row["seconds"]
    for row in history(0.0):
        assert row["data_seconds"] < 0.1


def test_channels_last_is_used_where_it_pays() -> None:
    """On by default, but only on CUDA and on CPUs whose kernels use AVX-512; off when the
    setting is off; the CPU's answer is torch's own capability."""
    from wsss.core.settings import TrainParams
    from wsss.training import loop

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    on, off = TrainParams(), TrainParams(channels_last=False)
    assert on.channels_last
    assert loop.memory_format(on, cuda) == torch.channels_last
    assert loop.memory_format(off, cuda) == torch.contiguous_format
    assert loop.memory_format(off, cpu) == torch.contiguous_format
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert loop.channels_last_pays(cpu) is avx512
    expected = torch.channels_last if avx512 else torch.contiguous_format
    assert loop.memory_format(on, cpu) == expected


def test_channels_last_trains_the_same_network_in_another_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batches reach the loss in the layout asked for, and the two layouts train the
    same weights up to float32 rounding (only the summation order differs)."""
    from wsss.core.settings import TrainParams
    from wsss.training import loop
    from wsss.training.loop import fit, make_loader

    monkeypatch.setattr(loop, "channels_last_pays", lambda device: True)  # any CPU

    def train(channels_last: bool) -> tuple[list[dict], nn.Module, set[bool]]:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise, as in Lite0
            nn.Conv2d(8, 1, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(0),
        )
        layouts: set[bool] = set()

        def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            layouts.add(x.is_contiguous(memory_format=torch.channels_last))
            return nn.functional.binary_cross_entropy_with_logits(model(x), y)

        loader = make_loader(SlowImages(0.0), 2, 0, torch.device("cpu"), seed=0)
        params = TrainParams(epochs=3, health="ignore", freeze_bn=False, warmup_epochs=0)
        history = fit(
            model,
            loader,
            torch.optim.SGD(model.parameters(), lr=0.5),
            loss,
            EpochCheckpoints(tmp_path / f"state-{channels_last}", "abc"),
            TrainParams(**{**params.__dict__, "channels_last": channels_last}),
            device=torch.device("cpu"),
        )
        return history, model, layouts

    nchw, nchw_model, nchw_layouts = train(False)
    last, last_model, last_layouts = train(True)
    assert nchw_layouts == {False} and last_layouts == {True}
    assert [r["loss"] for r in last] == pytest.approx([r["loss"] for r in nchw], rel=1e-4)
    assert nchw[0]["loss"] != pytest.approx(nchw[-1]["loss"], rel=1e-3)  # it did train
    for a, b in zip(nchw_model.parameters(), last_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_loader_workers_give_the_same_batches_however_they_start(tmp_path: Path) -> None:
    """Workers forked from the forkserver (the default) and from the training itself load
    the same augmented batches, epoch after epoch, as fit() drives the loader."""
    from wsss.data import build_manifest
    from wsss.data.datasets import Augment, ImageLabels
    from wsss.data.demo import generate
    from wsss.training.loop import make_loader

    generate(tmp_path / "demo", seed=0, num_train=8, num_val=2, image_size=64)
    manifest = build_manifest("demo", tmp_path / "demo", tmp_path)
    records = manifest.splits["train"]
    data = ImageLabels(records, len(manifest.classes), Augment(32, (0.7, 1.3), True, 0.3), 5)

    def batches(start: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = make_loader(data, 4, 1, torch.device("cpu"), seed=5, start=start)
        assert loader.multiprocessing_context.get_start_method() == start
        out = []
        for epoch in range(2):
            data.epoch = epoch
            loader.generator.manual_seed(5 + epoch)
            out += list(loader)
        return out

    forked, served = batches("fork"), batches("forkserver")
    assert len(forked) == len(served) == 4
    for (a, la), (b, lb) in zip(forked, served):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(la, lb, rtol=0, atol=0)
    assert not torch.equal(forked[0][0], forked[2][0])  # the epochs differ
