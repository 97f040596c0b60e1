"""The pipeline of each method: its scored steps in order, and the artefacts each step
depends on. ``rule all``, the report, ``wsss summary``, the experiments and the
benchmarks read the step list from here; the workflow reads the artefact graph to compute
an artefact once for all experiments whose settings agree up to it.

Methods (``method:`` in the config):

- ``psa``: CAM network, affinity labels, AffinityNet and random walk, pseudo-masks, the
  segmentation network trained on them;
- ``wsfcn``: WS-FCN, one network trained end to end on the image labels, whose masks of
  the training split are scored like pseudo-masks and whose masks of the val split like a
  segmentation network; with ``wsfcn.hybrid`` the segmentation network is trained on its
  training-split masks as well.

Both train the fully supervised bound (``seg_full``) the same way, so that weak / full
compares every weak result with the same bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

METHODS = ("psa", "wsfcn")


@dataclass(frozen=True)
class Step:
    """A scored step: ``key`` names its metrics file (``metrics/<key>.json``)."""

    key: str
    title: str
    split: str  # "train": scored on dataset.eval_split; "val": on dataset.val_split
    artefact: str  # the artefact (node of the method's ARTEFACTS) whose score it is
    switch: str = ""  # a boolean config key that turns the step on ("": always on)
    weak: bool = False  # a weakly supervised segmentation of the val split (weak / full)


SEG_FULL = Step(
    "seg_full", "segmentation, fully supervised bound", "val", "seg_full_eval", "seg.full_bound"
)

STEPS: dict[str, tuple[Step, ...]] = {
    "psa": (
        Step("cam", "CAMs", "train", "cam_eval"),
        Step("aff_labels", "affinity labels, confident pixels only", "train", "aff_eval"),
        Step("rw", "random walk", "train", "rw_eval"),
        Step("pseudo", "pseudo-masks", "train", "pseudo_eval"),
        Step("seg", "segmentation, weak", "val", "seg_eval", weak=True),
        SEG_FULL,
    ),
    "wsfcn": (
        Step("wsfcn_train", "WS-FCN masks", "train", "wsfcn_train_eval"),
        Step("wsfcn_val", "WS-FCN segmentation, weak", "val", "wsfcn_val_eval", weak=True),
        Step("seg", "segmentation, weak", "val", "seg_eval", "wsfcn.hybrid", weak=True),
        SEG_FULL,
    ),
}


@dataclass(frozen=True)
class Artefact:
    """What a step's output is made from (``sources``), which config keys its content
    depends on (``keys``), the workflow rules that make it (``rules``; ``sharded``: one job
    per shard), and where it lies in its experiment's directory (``path``; a sharded one's
    holds ``{shard}``): the rules read their outputs' and inputs' paths from here."""

    sources: tuple[str, ...]
    keys: tuple[str, ...]
    rules: tuple[str, ...]
    path: str
    sharded: bool = False


# What every method has: the dataset and the fully supervised bound.
COMMON: dict[str, Artefact] = {
    "dataset": Artefact((), ("dataset", "demo"), ("prepare_dataset",), "dataset.json"),
    "seg_full_model": Artefact(
        ("dataset",), ("seg.train",), ("train_seg_full",), "seg_full/model.pt"
    ),
    "seg_full_pred": Artefact(
        ("seg_full_model",),
        ("seg.infer",),
        ("infer_seg_full",),
        "pred/seg_full/shard-{shard}",
        True,
    ),
    "seg_full_eval": Artefact(("seg_full_pred",), (), ("eval_seg_full",), "metrics/seg_full.json"),
}


def weak_segmentation(pseudo_masks: str) -> dict[str, Artefact]:
    """The segmentation network trained on the label maps of artefact ``pseudo_masks``."""
    return {
        "seg_model": Artefact((pseudo_masks,), ("seg.train",), ("train_seg",), "seg/model.pt"),
        "seg_pred": Artefact(
            ("seg_model",), ("seg.infer",), ("infer_seg",), "pred/seg/shard-{shard}", True
        ),
        "seg_eval": Artefact(("seg_pred",), (), ("eval_seg",), "metrics/seg.json"),
    }


# Each method's artefact graph. Two experiments share an artefact when they run the same
# graph up to it and its keys agree for it and for everything upstream.
ARTEFACTS: dict[str, dict[str, Artefact]] = {
    "psa": {
        **COMMON,
        "cam_model": Artefact(
            ("dataset",), ("cam.train",), ("train_cam_stage", "train_cam"), "cam/model.pt"
        ),
        "cam": Artefact(
            ("cam_model",),
            ("cam.infer", "num_shards"),
            ("infer_cam",),
            "cam/shard-{shard}.h5",
            True,
        ),
        "cam_eval": Artefact(("cam",), ("cam.eval",), ("eval_cam",), "metrics/cam.json"),
        "aff_labels": Artefact(
            ("cam",), ("affinity.labels",), ("affinity_labels",), "aff_labels/shard-{shard}", True
        ),
        "aff_eval": Artefact(("aff_labels",), (), ("eval_aff_labels",), "metrics/aff_labels.json"),
        "aff_model": Artefact(("aff_labels",), ("affinity.train",), ("train_aff",), "aff/model.pt"),
        "rw": Artefact(
            ("aff_model", "cam"),
            ("affinity.random_walk",),
            ("random_walk",),
            "rw/shard-{shard}.h5",
            True,
        ),
        "rw_eval": Artefact(("rw",), (), ("eval_rw",), "metrics/rw.json"),
        "pseudo": Artefact(("rw",), ("pseudo",), ("pseudo_masks",), "pseudo/shard-{shard}", True),
        "pseudo_eval": Artefact(("pseudo",), (), ("eval_pseudo",), "metrics/pseudo.json"),
        **weak_segmentation("pseudo"),
    },
    "wsfcn": {
        **COMMON,
        "wsfcn_model": Artefact(("dataset",), ("wsfcn.train",), ("train_wsfcn",), "wsfcn/model.pt"),
        "wsfcn_train": Artefact(
            ("wsfcn_model",),
            ("wsfcn.infer",),
            ("infer_wsfcn_train",),
            "wsfcn/masks-train/shard-{shard}",
            True,
        ),
        "wsfcn_train_eval": Artefact(
            ("wsfcn_train",), (), ("eval_wsfcn_train",), "metrics/wsfcn_train.json"
        ),
        "wsfcn_val": Artefact(
            ("wsfcn_model",),
            ("wsfcn.infer",),
            ("infer_wsfcn_val",),
            "wsfcn/masks-val/shard-{shard}",
            True,
        ),
        "wsfcn_val_eval": Artefact(
            ("wsfcn_val",), (), ("eval_wsfcn_val",), "metrics/wsfcn_val.json"
        ),
        **weak_segmentation("wsfcn_train"),
    },
}


# Rules that run once per item of a setting, not per shard: rule -> number of jobs (their
# log and benchmark files end in -0, -1, ...).
REPEATED: dict[str, Callable[[dict], int]] = {
    "train_cam_stage": lambda config: len(config["cam"]["train"].get("progressive", [])),
}


# Where each artefact lies in its experiment's directory; an artefact of two methods lies in
# the same place (checked at import).
PATHS: dict[str, str] = {}
for _graph in ARTEFACTS.values():
    for _name, _artefact in _graph.items():
        if PATHS.setdefault(_name, _artefact.path) != _artefact.path:
            raise ValueError(f"artefact {_name} has two paths: {PATHS[_name]}, {_artefact.path}")

# The trained networks of each method: artefact -> model file (relative to the experiment).
NETWORKS: dict[str, dict[str, str]] = {
    method: {
        name: a.path
        for name, a in sorted(graph.items(), key=lambda item: item[0] in COMMON)
        if a.path.endswith("/model.pt")
    }
    for method, graph in ARTEFACTS.items()
}


def method_of(config: dict) -> str:
    """The config's method (``psa`` when it names none); an unknown one is an error."""
    method = config.get("method", "psa")
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(METHODS)})")
    return method


def lookup(config: dict, dotted: str) -> object:
    """The value at a dotted key (``cam.train``), or None if absent."""
    value: object = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def upstream(artefact: str, method: str = "psa") -> set[str]:
    """``artefact`` and every artefact it is made from, in ``method``'s graph."""
    graph = ARTEFACTS[method]
    seen, pending = set(), [artefact]
    while pending:
        node = pending.pop()
        if node not in seen:
            seen.add(node)
            pending.extend(graph[node].sources)
    return seen


def artefacts_of(config: dict) -> set[str]:
    """The artefacts a workflow config makes or reads (those its scored steps need)."""
    method = method_of(config)
    return set().union(*(upstream(step.artefact, method) for step in steps_of(config)))


def networks_of(config: dict) -> dict[str, str]:
    """The trained networks a workflow config asks for (those its scored steps need):
    artefact -> model file."""
    needed = artefacts_of(config)
    return {k: v for k, v in NETWORKS[method_of(config)].items() if k in needed}


def steps(method: str = "psa", config: dict | None = None) -> tuple[Step, ...]:
    """The scored steps of ``method`` in pipeline order; with ``config``, only those its
    switches turn on (None: every step)."""
    if method not in STEPS:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(STEPS)})")
    return tuple(
        s
        for s in STEPS[method]
        if config is None or not s.switch or lookup(config, s.switch) is True
    )


def steps_of(config: dict) -> tuple[Step, ...]:
    """The scored steps a workflow config asks for: up to ``last_step`` (None: all)."""
    method = method_of(config)
    found = steps(method, config)
    last = config.get("last_step")
    if last is None:
        return found
    every = {s.key: s for s in STEPS[method]}
    if last not in every:
        raise ValueError(
            f"last_step: unknown step '{last}' of method {method} (known: {', '.join(every)})"
        )
    if every[last] not in found:
        raise ValueError(
            f"last_step: step '{last}' is off: {every[last].switch} is not true "
            f"(the steps of this config: {', '.join(s.key for s in found)})"
        )
    keys = [s.key for s in found]
    return found[: keys.index(last) + 1]


def all_steps() -> dict[str, Step]:
    """Every known step by key, in an order that keeps each method's (for readers of
    finished runs: summary, report, comparison)."""
    order: list[Step] = []
    for method in STEPS.values():
        for i, step in enumerate(method):
            if any(s.key == step.key for s in order):
                continue
            later = {s.key for s in method[i + 1 :]}
            at = next((j for j, s in enumerate(order) if s.key in later), len(order))
            order.insert(at, step)
    return {s.key: s for s in order}


WEAK = tuple(key for key, step in all_steps().items() if step.weak)
