"""Poly schedule, learning-rate multipliers, frozen BN and per-epoch checkpoints."""

from __future__ import annotations

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
