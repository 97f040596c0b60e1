"""Cross-setting checks of the workflow config: each problem named by its dotted key."""

from __future__ import annotations

import ast
import copy
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from config_defaults import demo_config

from wsss.workflow import config_check
from wsss.workflow.config_check import ConfigError, check_config

REPO = Path(__file__).resolve().parent.parent
BASE = demo_config()


def problems(config: dict[str, Any], base_dir: Path) -> list[str]:
    """The lines of the ConfigError raised for ``config``."""
    with pytest.raises(ConfigError) as info:
        check_config(config, base_dir)
    return str(info.value).splitlines()


@pytest.fixture
def config() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def test_shipped_demo_config_passes(config: dict[str, Any], tmp_path: Path) -> None:
    check_config(config, tmp_path)  # demo: the root need not exist yet


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_presets_pass(preset: str, tmp_path: Path) -> None:
    """Each preset (merged over config.yaml, as --configfile is) once its files exist."""
    config = demo_config(REPO / "configs" / preset)
    config["dataset"]["root"] = str(tmp_path)
    for section in ("cam", "affinity", "seg"):
        weights = config[section]["train"]["weights"]
        if weights != "imagenet":
            (tmp_path / weights).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / weights).touch()
    check_config(config, tmp_path)


def test_alpha_must_be_walked(config: dict[str, Any], tmp_path: Path) -> None:
    config["pseudo"]["alpha"] = 3
    config["affinity"]["random_walk"]["alphas"] = [0.5, 1, 2, 4]
    assert problems(config, tmp_path) == [
        "pseudo.alpha: 3 is not among affinity.random_walk.alphas [0.5, 1, 2, 4]"
    ]
    config["pseudo"]["alpha"] = 2.0  # compared as numbers
    check_config(config, tmp_path)


def test_alpha_unused_without_background(config: dict[str, Any], tmp_path: Path) -> None:
    config["pseudo"]["alpha"] = 3
    config["dataset"].update(kind="msrc", root=str(tmp_path))
    check_config(config, tmp_path)


def test_imagenet_weights_only_offline(config: dict[str, Any], tmp_path: Path) -> None:
    config["seg"]["train"]["backbone"] = "resnet50"
    assert problems(config, tmp_path) == [
        "seg.train.weights: no offline ImageNet weights for resnet50 (only for lite0): "
        "give the path of a weights file"
    ]


def test_weights_file_must_exist(config: dict[str, Any], tmp_path: Path) -> None:
    config["cam"]["train"].update(backbone="resnet38d", weights="weights/r38.pth")
    config["affinity"]["train"]["weights"] = "none"  # build_backbone takes None, not "none"
    assert problems(config, tmp_path) == [
        f"cam.train.weights: weights/r38.pth is not an existing file "
        f"({tmp_path / 'weights' / 'r38.pth'})",
        f"affinity.train.weights: none is not an existing file ({tmp_path / 'none'})",
    ]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "r38.pth").touch()
    (tmp_path / "none").touch()
    check_config(config, tmp_path)


def test_backbone_must_be_known(config: dict[str, Any], tmp_path: Path) -> None:
    config["cam"]["train"]["backbone"] = "vgg16"
    assert problems(config, tmp_path) == [
        "cam.train.backbone: unknown backbone 'vgg16' "
        "(choose from lite0, resnet50, resnet101, resnet38d)"
    ]


def test_posterior_only_with_an_hfpl_loss(config: dict[str, Any], tmp_path: Path) -> None:
    config["cam"]["train"]["posterior"] = "multinomial"
    assert problems(config, tmp_path) == [
        "cam.train.posterior: multinomial has no effect unless sampling_weight or "
        "similarity_weight is above 0 (the plain GAP loss has no posterior to choose)"
    ]
    config["cam"]["train"]["similarity_weight"] = 1.0
    check_config(config, tmp_path)


def test_affinity_crop_on_the_grid(config: dict[str, Any], tmp_path: Path) -> None:
    config["affinity"]["train"]["crop_size"] = 164
    config["cam"]["train"]["crop_size"] = 164  # any size: the CAM network pools globally
    assert problems(config, tmp_path) == [
        "affinity.train.crop_size: 164 is not a multiple of 8 (the affinity grid)"
    ]
    config["affinity"]["train"]["crop_size"] = 168  # a multiple of 8, not of output_stride 16
    check_config(config, tmp_path)


def test_dataset_root_must_exist(config: dict[str, Any], tmp_path: Path) -> None:
    config["dataset"].update(kind="voc", root="data/VOC2012")
    assert problems(config, tmp_path) == [
        f"dataset.root: data/VOC2012 is not an existing directory ({tmp_path / 'data' / 'VOC2012'})"
    ]
    (tmp_path / "data" / "VOC2012").mkdir(parents=True)
    check_config(config, tmp_path)


@pytest.mark.parametrize(
    ("kind", "options", "bad", "allowed"),
    [
        ("voc", {"label_source": "xml", "year": 1}, "year", "has_background, label_source, name"),
        ("msrc", {"has_background": True}, "has_background", "label_source"),
        ("demo", {"name": "x"}, "name", "label_source"),
        ("coco", {"year": 2014, "mask_dir": "m"}, "mask_dir", "name, splits, year"),
        ("folder", {"csv": "a.csv", "root": "x"}, "root", "classes, csv, has_background, name"),
    ],
)
def test_dataset_options_fit_the_loader(
    config: dict[str, Any],
    tmp_path: Path,
    kind: str,
    options: dict[str, object],
    bad: str,
    allowed: str,
) -> None:
    config["dataset"].update(kind=kind, root=str(tmp_path), options=options)
    assert problems(config, tmp_path) == [
        f"dataset.options.{bad}: not an option of the dataset.kind {kind} loader "
        f"(allowed: {allowed})"
    ]


def test_loaders_mirror_build_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """LOADERS names exactly the arguments build_manifest passes itself, kind by kind."""
    from wsss.data import build_manifest, coco, folder, voc

    calls: list[tuple[str, set[str]]] = []

    def recorder(module_name: str) -> Callable[..., None]:
        return lambda root, **kwargs: calls.append((module_name, set(kwargs)))

    for module in (voc, coco, folder):
        monkeypatch.setattr(module, "build", recorder(module.__name__))
    for kind, (module_name, passed) in config_check.LOADERS.items():
        calls.clear()
        build_manifest(kind, tmp_path, tmp_path)
        assert calls == [(module_name, set(passed))], kind


def test_splits_must_be_named(config: dict[str, Any], tmp_path: Path) -> None:
    config["dataset"].update(eval_split="", val_split=" ")
    assert problems(config, tmp_path) == [
        "dataset.eval_split: must be a non-empty split name, not ''",
        "dataset.val_split: must be a non-empty split name, not ' '",
    ]


def test_every_problem_is_listed(config: dict[str, Any], tmp_path: Path) -> None:
    config["dataset"].update(kind="folder", root="missing", options={"sep": ";"}, train_split="")
    config["pseudo"]["alpha"] = 5
    config["seg"]["train"].update(backbone="resnet101", weights="imagenet")
    config["affinity"]["train"]["crop_size"] = 100
    lines = problems(config, tmp_path)
    assert [line.split(":")[0] for line in lines] == [
        "dataset.root",
        "dataset.options.sep",
        "dataset.train_split",
        "pseudo.alpha",
        "seg.train.weights",
        "affinity.train.crop_size",
    ]


def module_constants(name: str) -> list[object]:
    """The values of every top-level ``name = <literal>`` in the package's source."""
    values = []
    for path in sorted((REPO / "src" / "wsss").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                values.append(ast.literal_eval(node.value))
    return values


def test_constants_match_the_code() -> None:
    """Read from the source: the modules that define them import torch."""
    assert set(module_constants("GRID")) == {config_check.AFF_GRID}


def test_import_leaves_torch_out() -> None:
    code = "import sys, wsss.workflow.config_check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- the dense CRF is an optional extra: a config that needs it says so before any job ----


def test_without_the_dense_crf_each_setting_that_needs_it_is_named(
    config: dict[str, Any], tmp_path: Path
) -> None:
    config = copy.deepcopy(config)
    config["seg"]["infer"]["crf"] = True
    lines = problems_without_crf(config, tmp_path)
    assert [line.split(":")[0] for line in lines] == ["method", "pseudo.crf", "seg.infer.crf"]
    assert all("pip install 'wsss[crf]'" in line for line in lines)
    assert "affinity labels of method psa always use it" in lines[0]
    assert lines[1].endswith("or set pseudo.crf: false")


def test_without_the_dense_crf_a_run_that_does_not_need_it_passes(
    config: dict[str, Any], tmp_path: Path
) -> None:
    config = copy.deepcopy(config)
    check_config({**config, "last_step": "cam"}, tmp_path, crf_installed=False)
    wsfcn = {**config, "method": "wsfcn"}
    check_config(wsfcn, tmp_path, crf_installed=False)  # WS-FCN's inference: crf off
    wsfcn["wsfcn"] = {**wsfcn["wsfcn"], "infer": {**wsfcn["wsfcn"]["infer"], "crf": True}}
    assert [line.split(":")[0] for line in problems_without_crf(wsfcn, tmp_path)] == [
        "wsfcn.infer.crf"
    ]


def test_the_crf_check_asks_this_python_when_not_told(
    config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "pydensecrf" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigError, match="pydensecrf2 is not installed"):
        check_config(config, tmp_path)
    check_config(config, tmp_path, crf_installed=True)  # jobs in conda envs have it


def problems_without_crf(config: dict[str, Any], base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_config(config, base, crf_installed=False)
    return str(info.value).splitlines()
