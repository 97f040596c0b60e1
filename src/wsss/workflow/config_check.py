"""Checks of workflow settings beyond the JSON schema: settings that depend on each other or
on files. Run on the validated config (defaults filled in) before the first job.

Imports nothing heavy: the dataset loader of ``dataset.kind`` is imported only to read its
signature (and, for ``method: wsfcn``, the training split's image labels), and torch not at
all.
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wsss.core.settings import BACKBONES
from wsss.data import LOADERS, unknown_options
from wsss.workflow.pipeline import artefacts_of, lookup, steps_of

# The stride of AffinityNet's features (GRID in wsss.stages.train_aff): its training crops
# must be a multiple of it, or the features outgrow the label grid (the schema agrees).
AFF_GRID = 8
# What wsss.data.build_manifest calls for each dataset.kind: the loader's module and the
# keyword arguments it passes itself besides the root (dataset.options must not repeat them).
# The networks each method trains (config sections with a ``train`` subsection).
TRAIN_SECTIONS = {"psa": ("cam", "affinity", "seg"), "wsfcn": ("wsfcn", "seg")}
SPLITS = ("train_split", "eval_split", "val_split")


class ConfigError(ValueError):
    """Settings that cannot work together; the message lists every problem, one a line."""


def check_config(
    config: dict[str, Any], base_dir: str | os.PathLike[str], crf_installed: bool | None = None
) -> None:
    """Raise :class:`ConfigError` listing every problem of ``config``, each line starting
    with the dotted key concerned; relative paths are relative to ``base_dir``.
    ``crf_installed``: whether the jobs can import the dense CRF (pydensecrf2, the ``crf``
    extra); None: whether this Python can."""
    base = Path(base_dir)
    problems = _check_dataset(config["dataset"], base)
    if crf_installed is None:
        crf_installed = importlib.util.find_spec("pydensecrf") is not None
    if not crf_installed:
        problems += [
            f"{key}: needs the dense CRF, whose package pydensecrf2 is not installed: "
            f"pip install 'wsss[crf]' (it compiles; a C++ compiler and the Python headers "
            f"are needed){advice}"
            for key, advice in crf_settings(config)
        ]
    method = config.get("method", "psa")
    if method not in TRAIN_SECTIONS:
        raise ConfigError(f"method: unknown method '{method}' (known: {', '.join(TRAIN_SECTIONS)})")
    problems += _check_steps(config)
    if method == "psa" and _has_background(config["dataset"]):
        problems += _check_alpha(config)
    for section in TRAIN_SECTIONS[method]:
        problems += _check_backbone(f"{section}.train", config[section]["train"], base)
    if method == "psa":
        problems += _check_psa(config)
    else:
        problems += _check_wsfcn(config["wsfcn"]["train"])
        problems += _check_label_sets(config["dataset"], base)
    if method != "wsfcn" and config.get("wsfcn", {}).get("hybrid"):
        problems.append(
            f"wsfcn.hybrid: true has no effect with method {method} (only with method wsfcn)"
        )
    if problems:
        raise ConfigError("\n".join(problems))


def crf_settings(config: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings of ``config`` that run the dense CRF in the steps it runs, each with
    how to do without (empty: the CRF is part of the method)."""
    try:
        made = artefacts_of(config)
    except ValueError:
        return []
    found = []
    if "aff_labels" in made:
        found.append(("method", " (the affinity labels of method psa always use it)"))
    switches = {
        "pseudo": ("pseudo",),
        "seg.infer": ("seg_pred", "seg_full_pred"),
        "wsfcn.infer": ("wsfcn_train", "wsfcn_val"),
    }
    for section, artefacts in switches.items():
        settings = lookup(config, section) or {}
        if settings.get("crf") and made.intersection(artefacts):
            found.append((f"{section}.crf", f", or set {section}.crf: false"))
    return found


def _check_steps(config: dict[str, Any]) -> list[str]:
    """``last_step`` must be one of the steps the method runs with these settings."""
    try:
        steps_of(config)
    except ValueError as err:
        return [str(err)]
    return []


def _check_psa(config: dict[str, Any]) -> list[str]:
    problems = _check_posterior("cam.train", config["cam"]["train"])
    crop = config["affinity"]["train"]["crop_size"]
    if crop % AFF_GRID:
        problems.append(
            f"affinity.train.crop_size: {crop} is not a multiple of {AFF_GRID} (the affinity grid)"
        )
    return problems


def _check_wsfcn(train: dict[str, Any]) -> list[str]:
    problems = _check_posterior("wsfcn.train", train, "nGWP")
    epochs, warmup = train.get("epochs", 30), train.get("classification_epochs", 7)
    if warmup >= epochs:
        problems.append(
            f"wsfcn.train.classification_epochs: {warmup} is not below wsfcn.train.epochs "
            f"{epochs}: the mask loss would never train"
        )
    return problems


def _has_background(dataset: dict[str, Any]) -> bool:
    """Whether the dataset has a background class (only then is ``pseudo.alpha`` used)."""
    return dataset["kind"] != "msrc" and bool(dataset["options"].get("has_background", True))


def _check_alpha(config: dict[str, Any]) -> list[str]:
    alpha = config["pseudo"]["alpha"]
    alphas = config["affinity"]["random_walk"]["alphas"]
    if float(alpha) in [float(a) for a in alphas]:
        return []
    return [f"pseudo.alpha: {alpha} is not among affinity.random_walk.alphas {alphas}"]


def _check_backbone(key: str, train: dict[str, Any], base: Path) -> list[str]:
    name, weights = train["backbone"], train["weights"]
    if name not in BACKBONES:
        return [f"{key}.backbone: unknown backbone '{name}' (choose from {', '.join(BACKBONES)})"]
    if weights == "imagenet":
        if BACKBONES[name]:
            return []
        offline = ", ".join(sorted(b for b, shipped in BACKBONES.items() if shipped))
        return [
            f"{key}.weights: no offline ImageNet weights for {name} (only for "
            f"{offline}): give the path of a weights file"
        ]
    path = base / weights
    if path.is_file():
        return []
    return [f"{key}.weights: {weights} is not an existing file ({path.absolute()})"]


def _check_posterior(key: str, train: dict[str, Any], pooling: str = "GAP") -> list[str]:
    """A multinomial posterior changes nothing unless an HFPL loss uses it: refuse the
    setting rather than run an experiment that silently equals the plain one."""
    if train.get("posterior", "binomial") == "binomial":
        return []
    if train.get("sampling_weight", 0) > 0 or train.get("similarity_weight", 0) > 0:
        return []
    return [
        f"{key}.posterior: multinomial has no effect unless sampling_weight or "
        f"similarity_weight is above 0 (the plain {pooling} loss has no posterior to choose)"
    ]


def _check_dataset(dataset: dict[str, Any], base: Path) -> list[str]:
    problems = []
    kind = dataset["kind"]
    root = base / dataset["root"]
    if kind != "demo" and not root.is_dir():
        problems.append(
            f"dataset.root: {dataset['root']} is not an existing directory ({root.absolute()})"
        )
    if kind in LOADERS:
        problems += unknown_options(kind, dataset["options"])
    else:
        problems.append(f"dataset.kind: unknown kind '{kind}' (choose from {', '.join(LOADERS)})")
    for split in SPLITS:
        value = dataset[split]
        if not (isinstance(value, str) and value.strip()):
            problems.append(f"dataset.{split}: must be a non-empty split name, not {value!r}")
    return problems


def _check_label_sets(dataset: dict[str, Any], base: Path) -> list[str]:
    """WS-FCN learns masks by telling apart images with different label sets: refuse a
    training split whose labelled images all carry the same labels (a one-class dataset,
    or one where every image has every class). Its classification is then the label
    frequencies alone, the mask loss has nothing to separate, and the training's health
    check (held-out mAP above that prior) can never pass, whatever the learning rate.
    Read as cheaply as the layout allows, stopping at the second label set; a dataset that
    cannot be read is left to ``wsss prepare``, which names the file."""
    if dataset["kind"] == "demo":  # generated: six classes, one to three objects an image
        return []
    first: tuple[str, ...] | None = None
    count = 0
    try:
        for labels in _train_label_sets(dataset, base):
            if not labels:  # images without a label are left out of the training
                continue
            if first is not None and labels != first:
                return []
            first, count = labels, count + 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    if first is None:
        return []
    split = dataset["train_split"]
    return [
        f"dataset.train_split: all {count} labelled images of split '{split}' of "
        f"{dataset['root']} have the same labels ({', '.join(first)}): method wsfcn cannot "
        "learn masks from them, its mask loss needs images with different label sets (at "
        "least two classes that do not always appear together), and the training's health "
        "check could never pass; add images with other labels, or use another dataset"
    ]


def _train_label_sets(dataset: dict[str, Any], base: Path) -> Iterator[tuple[str, ...]]:
    """The sorted label names of each image of the training split, read lazily."""
    kind, options, split = dataset["kind"], dataset["options"], dataset["train_split"]
    root = base / dataset["root"]
    if kind == "folder":
        from wsss.data import folder

        yield from folder.split_label_names(root, split, options.get("csv", "labels.csv"))
    elif kind in ("voc", "msrc"):
        from wsss.data import voc

        classes = (
            voc.read_classes(root / "classes.txt")
            if (root / "classes.txt").is_file()
            else voc.VOC_CLASSES
        )
        background = kind == "voc" and bool(options.get("has_background", True))
        source = options.get("label_source", "masks")
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        for image_id in voc._read_ids(split_file, root / "JPEGImages"):
            record = voc._record(root, image_id, classes, background, source)
            yield tuple(sorted(classes[i] for i in record.labels))
    elif kind == "coco":
        import json

        year = options.get("year", 2014)
        with open(root / "annotations" / f"instances_{split}{year}.json") as f:
            data = json.load(f)
        names = {c["id"]: c["name"] for c in data["categories"]}
        found: dict[object, set[str]] = defaultdict(set)
        for ann in data["annotations"]:
            found[ann["image_id"]].add(names[ann["category_id"]])
        for labels in found.values():
            yield tuple(sorted(labels))
